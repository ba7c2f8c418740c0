"""`tfimb train`: the classifier experiment's config (`ExperimentConfig`).

Every key is optional and defaults to the imbalanced CIFAR-10 protocol:

    data:      {source: tfds | folder | digits | auto, name: cifar10, dir: PATH, validation_per_class: 0, seed: 0,
               sampling: instance | class_balanced | square_root | progressive}
               # auto: the folder data.dir or $TFIMB_DATA_DIR if set, else tfds
    imbalance: {minority: [1, 4, 6], minority_count: 250, majority_count: null}
               # or {long_tail_factor: 100}, or null for the data as it is
    model:     {name: resnet18_cifar | resnet8 | resnet20 | resnet32, head: dense | cosine}
    loss:      {name: class_balanced_focal, beta: 0.99, gamma: 1.0, ...}   # counts filled in
    train:     {epochs: 25, batch_size: 128, momentum: 0.9, weight_decay: 5.0e-4,
                lr_values: [0.1, 0.01, 0.001], lr_boundaries: [15, 20], seed: 0, ...}
    mixed_precision: auto | float32 | mixed_bfloat16 | mixed_float16
    distribute: {strategy: default | mirrored | multi_worker, num_cpu_devices: 2,
                 sync_batch_norm: false}
    evaluation: {minority: null, interval: 1, every_epoch_from: null}
    stage:     null | {method: crt | lws | tau_norm | ncm, from_run: RUN_DIR, taus: [0, 0.1, ..., 2]}
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable

from tfimb import _checks, catalog
from tfimb._checks import PathLike
from tfimb.config import engine, files
from tfimb.config.engine import ConfigError
from tfimb.config.common import DataConfig, DistributeConfig

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class ImbalanceConfig:
    minority: typing.Optional[typing.List[int]] = None
    minority_count: typing.Optional[int] = None
    majority_count: typing.Optional[int] = None
    long_tail_factor: typing.Optional[float] = None

    # The section is one of two modes: a long-tail factor drops the group keys and group keys
    # drop the long-tail factor, so that `{long_tail_factor: 100}` needs nothing else.
    GROUP_KEYS = ("minority", "minority_count", "majority_count")

    @staticmethod
    def merge_into(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
        """The keys of `base` that `update` keeps (engine.merge's rule for this section)."""
        if update.get("long_tail_factor") is not None:
            return {}
        if any(k in update for k in ImbalanceConfig.GROUP_KEYS):
            return {k: v for k, v in base.items() if k != "long_tail_factor"}
        return base

    def validate(self) -> None:
        by_group = self.minority is not None or self.minority_count is not None
        if by_group and self.long_tail_factor is not None:
            raise ConfigError("Invalid value for section `imbalance`. Expected either "
                              "{minority, minority_count, majority_count} or {long_tail_factor}, "
                              f"not both. Received: imbalance={dataclasses.asdict(self)}")
        if self.long_tail_factor is not None:
            if not self.long_tail_factor >= 1:
                raise ConfigError("Invalid value for key `imbalance.long_tail_factor`. Expected "
                                  "a number >= 1 (n_max / n_min). Received: "
                                  f"imbalance.long_tail_factor={self.long_tail_factor!r}")
        elif self.minority is None or self.minority_count is None:
            if self.majority_count is None:
                raise ConfigError("Invalid value for section `imbalance`. Expected minority and "
                                  "minority_count, or majority_count, or long_tail_factor, or "
                                  f"imbalance: null. Received: imbalance={dataclasses.asdict(self)}")
        if self.minority is not None:
            engine.check(_checks.check_classes, "imbalance.minority", self.minority)
        for key in ("minority_count", "majority_count"):
            if getattr(self, key) is not None:
                engine.at_least(f"imbalance.{key}", getattr(self, key), 1)


@dataclasses.dataclass
class ModelConfig:
    # resnet18_cifar | resnet8 | resnet20 | resnet32 | resnet50 | keras.applications.<Class>
    name: str = "resnet18_cifar"
    head: str = "dense"              # dense | cosine (for the LDAM loss)
    weights: typing.Optional[str] = None  # a weights file (resnet50, keras.applications only)
    # Where a CIFAR ResNet's shape changes (tfimb.models.resnet): He et al.'s option B or A,
    # and TensorFlow's SAME or PyTorch's symmetric padding of the stride-2 convolutions.
    shortcut: str = "projection"     # projection | identity
    padding: str = "same"            # same | symmetric

    def validate(self) -> None:
        if isinstance(self.name, str) and self.name.startswith(catalog.APPLICATIONS):
            from tfimb import models  # Only Keras knows its application classes.

            known = models.is_model_name(self.name)
        else:
            known = self.name in catalog.MODEL_NAMES
        if not known:
            raise ConfigError(
                f"Invalid value for key `model.name`. Expected one of "
                f"{sorted(catalog.MODEL_NAMES)} or keras.applications.<Class>. Received: "
                f"model.name={self.name!r}")
        engine.one_of("model.head", self.head, catalog.HEADS)
        engine.one_of("model.shortcut", self.shortcut, catalog.SHORTCUTS)
        engine.one_of("model.padding", self.padding, catalog.PADDINGS)
        if ((self.shortcut, self.padding) != ("projection", "same")
                and self.name not in catalog.CIFAR_RESNETS):
            raise ConfigError(
                "Invalid value for keys `model.shortcut` / `model.padding`. Expected projection "
                f"/ same for {self.name!r} (only the CIFAR ResNets {list(catalog.CIFAR_RESNETS)} "
                f"take them). Received: model.shortcut={self.shortcut!r}, "
                f"model.padding={self.padding!r}")
        if self.weights is not None and not (self.name in catalog.TAKES_WEIGHTS
                                             or self.name.startswith(catalog.APPLICATIONS)):
            raise ConfigError(
                "Invalid value for key `model.weights`. Expected null for "
                f"{self.name!r} (only resnet50 and keras.applications models load weights). "
                f"Received: model.weights={self.weights!r}")


@dataclasses.dataclass
class LossConfig:
    """`name` plus the loss's own keyword arguments, which sit beside it in the YAML and are
    gathered into `options` (its `counts` come from the data). Valid names and arguments come
    from the loss registry, `tfimb.catalog`."""

    EXTRA_KEYS: typing.ClassVar[str] = "options"

    name: str = "softmax_cross_entropy"
    options: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    drw_epoch: typing.Optional[int] = None  # deferred re-weighting starts at this epoch (0-based)
    drw_beta: float = 0.9999

    # The library's own check of each loss argument a config can give (NumPy only), so that a
    # bad value is a config error before any data is read or any run directory is written.
    _ARGUMENT_CHECKS: typing.ClassVar[dict] = {
        "beta": lambda v: v is None or _checks.check_beta(v),
        "gamma": _checks.check_gamma,
        "tau": lambda v: _checks.check_range("tau", v, 0.0),
        "max_margin": lambda v: _checks.check_range("max_margin", v, 0.0),
        "scale": lambda v: _checks.check_range("scale", v, 0.0, low_inclusive=False),
        "normalization": _checks.check_normalization,
        "weighting": _checks.check_weighting,
        "label_smoothing": _checks.check_label_smoothing,
        "from_logits": lambda v: _checks.check_bool("from_logits", v),
    }

    def validate(self) -> None:
        engine.one_of("loss.name", self.name, catalog.NAMES)
        valid = sorted(catalog.config_keys(self.name))
        for key in self.options:
            if key not in valid:
                raise ConfigError(
                    f"Unknown key `loss.{key}` for loss {self.name!r}. Valid keys: "
                    f"{', '.join(['name', 'drw_epoch', 'drw_beta'] + valid)}")
        for key in ("beta",) if "beta" in catalog.BY_NAME[self.name].required else ():
            if key not in self.options:
                raise ConfigError(f"Missing key `loss.{key}` for loss {self.name!r} (required; "
                                  "e.g. 0.999).")
        for key, value in self.options.items():
            try:
                self._ARGUMENT_CHECKS[key](value)
            except ValueError as error:
                message = (str(error).replace(f"argument `{key}`", f"key `loss.{key}`", 1)
                           .replace(f"Received: {key}=", f"Received: loss.{key}=", 1))
                raise ConfigError(message) from None
        if self.drw_epoch is not None:
            engine.at_least("loss.drw_epoch", self.drw_epoch, 0)
            engine.in_range("loss.drw_beta", self.drw_beta, _checks.check_beta, "0 <= beta < 1")

    @property
    def needs_counts(self) -> bool:
        return catalog.takes(self.name, "counts", required=True)


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 25
    batch_size: int = 128            # global batch, split across replicas
    momentum: float = 0.9
    weight_decay: float = 5.0e-4     # coupled L2 as PyTorch's SGD(weight_decay=...)
    lr_values: typing.List[float] = dataclasses.field(default_factory=lambda: [0.1, 0.01, 0.001])
    lr_boundaries: typing.List[int] = dataclasses.field(default_factory=lambda: [15, 20])
    warmup_epochs: int = 0           # linear warm-up to lr_values[0] (Cui et al. use 5)
    # step: lr_values between lr_boundaries; cosine: lr_values[0] annealed to 0 over the
    # epochs after the warm-up (per epoch; lr_boundaries empty), as in the ImageNet-LT protocol.
    lr_schedule: str = "step"
    seed: int = 0
    steps_per_execution: int = 1
    checkpoint_every: typing.Optional[int] = None  # steps; a checkpoint every epoch regardless

    def validate(self) -> None:
        engine.at_least("train.epochs", self.epochs, 1)
        engine.at_least("train.batch_size", self.batch_size, 1)
        engine.at_least("train.warmup_epochs", self.warmup_epochs, 0)
        engine.at_least("train.steps_per_execution", self.steps_per_execution, 1)
        if self.checkpoint_every is not None:
            engine.at_least("train.checkpoint_every", self.checkpoint_every, 1)
        engine.one_of("train.lr_schedule", self.lr_schedule, ("step", "cosine"))
        if self.lr_schedule == "cosine" and (self.lr_boundaries or self.warmup_epochs >=
                                             self.epochs):
            raise ConfigError("Invalid value for keys `train.lr_boundaries` / "
                              "`train.warmup_epochs`. Expected no boundaries and a warm-up "
                              "shorter than train.epochs for the cosine schedule. Received: "
                              f"train.lr_boundaries={self.lr_boundaries}, "
                              f"train.warmup_epochs={self.warmup_epochs}")
        if len(self.lr_values) != len(self.lr_boundaries) + 1:
            raise ConfigError("Invalid value for key `train.lr_values`. Expected one more value "
                              f"than train.lr_boundaries ({len(self.lr_boundaries)}). Received: "
                              f"train.lr_values={self.lr_values}")
        if list(self.lr_boundaries) != sorted(set(self.lr_boundaries)) or \
                any(b < 1 for b in self.lr_boundaries):
            raise ConfigError("Invalid value for key `train.lr_boundaries`. Expected increasing "
                              "epochs >= 1. Received: "
                              f"train.lr_boundaries={self.lr_boundaries}")
        if not 0 <= self.momentum < 1:
            raise ConfigError("Invalid value for key `train.momentum`. Expected 0 <= momentum "
                              f"< 1. Received: train.momentum={self.momentum}")
        if self.weight_decay < 0 or any(v < 0 for v in self.lr_values):
            raise ConfigError("Invalid value for keys `train.weight_decay` / `train.lr_values`. "
                              "Expected non-negative numbers. Received: "
                              f"weight_decay={self.weight_decay}, lr_values={self.lr_values}")


@dataclasses.dataclass
class EvaluationConfig:
    # Minority group for the three-group table; null: imbalance.minority, else the rarer half
    # of a long tail (classes below the geometric mean of the largest and smallest counts).
    minority: typing.Optional[typing.List[int]] = None
    # Evaluate every `interval` epochs, every epoch from 0-based epoch `every_epoch_from` on, and
    # always the last epoch: long protocols (CIFAR-10-LT, 200 epochs) keep their curves and
    # the best-over-epochs statistic (reached after the last learning-rate drop) at a fraction
    # of the evaluation cost.
    interval: int = 1
    every_epoch_from: typing.Optional[int] = None

    def validate(self) -> None:
        if self.minority is not None:
            engine.check(_checks.check_classes, "evaluation.minority", self.minority)
        engine.at_least("evaluation.interval", self.interval, 1)
        if self.every_epoch_from is not None:
            engine.at_least("evaluation.every_epoch_from", self.every_epoch_from, 0)

    def evaluates(self, epoch: int, epochs: int) -> bool:
        """Whether 0-based `epoch` of `epochs` is evaluated."""
        return ((epoch + 1) % self.interval == 0 or epoch == epochs - 1
                or (self.every_epoch_from is not None and epoch >= self.every_epoch_from))


STAGE_METHODS = ("crt", "lws", "tau_norm", "ncm")
TRAINED_STAGES = ("crt", "lws")
# Validation images per class drawn from the left-out images when the first run has none.
DEFAULT_VALIDATION = 100
# cRT / LWS on CIFAR (BagofTricks-LT configs/cao_cifar/two_stage/classifier_balance): 30
# epochs of batch 128, SGD lr 0.1 with momentum 0.9 and weight decay 5e-4, a 5-epoch warm-up,
# lr x 0.1 at epochs 10 and 20. (Their SGD is Nesterov's; tfimb's trainer is plain momentum.)
STAGE_TRAIN = {"epochs": 30, "batch_size": 128, "momentum": 0.9, "weight_decay": 5.0e-4,
               "lr_values": [0.1, 0.01, 0.001], "lr_boundaries": [10, 20], "warmup_epochs": 5,
               "lr_schedule": "step", "checkpoint_every": None}


@dataclasses.dataclass
class StageConfig:
    """The decoupled second stage (Kang et al., ICLR 2020) on a finished run's model
    (`tfimb decouple`, `tfimb.experiments.decouple`): the other sections then describe the
    stage (its data, sampling, schedule); `model` and `imbalance` stay the first run's."""
    method: str = "crt"              # crt | lws | tau_norm | ncm
    from_run: str = ""               # the finished run directory (config.yaml, model.keras)
    # tau_norm's candidates, the one with the best validation accuracy kept (Kang et al.'s
    # 0..2 sweep); without a validation split, tau = 1.
    taus: typing.List[float] = dataclasses.field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(21)])

    def validate(self) -> None:
        engine.one_of("stage.method", self.method, STAGE_METHODS)
        if not self.from_run:
            raise ConfigError("Invalid value for key `stage.from_run`. Expected the directory "
                              "of a finished `tfimb train` run. Received: stage.from_run=''")
        if not self.taus or any(not isinstance(t, (int, float)) or isinstance(t, bool)
                                or not 0 <= t < float("inf") for t in self.taus):
            raise ConfigError("Invalid value for key `stage.taus`. Expected a non-empty list "
                              f"of finite numbers >= 0. Received: stage.taus={self.taus!r}")


@dataclasses.dataclass
class ExperimentConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    imbalance: typing.Optional[ImbalanceConfig] = dataclasses.field(
        default_factory=lambda: ImbalanceConfig(minority=[1, 4, 6], minority_count=250))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mixed_precision: str = "auto"
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    stage: typing.Optional[StageConfig] = None  # a decoupled second stage (tfimb decouple)

    def validate(self) -> ExperimentConfig:
        for section in (self.data, self.imbalance, self.model, self.loss, self.train,
                        self.distribute, self.evaluation, self.stage):
            if section is not None:
                section.validate()
        engine.one_of("mixed_precision", self.mixed_precision, PRECISIONS)
        if self.loss.name == "ldam" and self.model.head != "cosine":
            raise ConfigError("Invalid value for key `model.head`. Expected 'cosine' with the "
                              "ldam loss (LDAM's margins and scale assume cosine logits). "
                              f"Received: model.head={self.model.head!r}")
        if self.loss.drw_epoch is not None and self.loss.name != "ldam":
            raise ConfigError("Invalid value for key `loss.drw_epoch`. Expected it only with "
                              "the ldam loss (deferred re-weighting of LDAM-DRW). Received: "
                              f"loss.drw_epoch={self.loss.drw_epoch} with loss {self.loss.name!r}")
        if self.loss.drw_epoch is not None and self.loss.drw_epoch >= self.train.epochs:
            raise ConfigError("Invalid value for key `loss.drw_epoch`. Expected an epoch below "
                              f"train.epochs={self.train.epochs}. Received: "
                              f"loss.drw_epoch={self.loss.drw_epoch}")
        return self

    def resolved(self) -> ExperimentConfig:
        """The config with `data.source: auto` made concrete (what a run records)."""
        return dataclasses.replace(self, data=self.data.concrete())

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the YAML layout (loss options flattened into `loss`)."""
        out = dataclasses.asdict(self)
        loss = out.pop("loss")
        out["loss"] = {"name": loss["name"], **loss["options"]}
        if loss["drw_epoch"] is not None:
            out["loss"].update(drw_epoch=loss["drw_epoch"], drw_beta=loss["drw_beta"])
        keys = ("data", "imbalance", "model", "loss", "train", "mixed_precision", "distribute",
                "evaluation") + (("stage",) if self.stage is not None else ())
        return {key: out[key] for key in keys}


def resolve(raw: Any, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """A validated `ExperimentConfig`: defaults, then the YAML dict, then `--set` overrides."""
    return engine.resolve_dataclass(ExperimentConfig, raw, overrides)


def resolve_variants(raw: Any, overrides: Iterable[str] = ()
                     ) -> list[tuple[str | None, ExperimentConfig]]:
    """[(variant name or None, validated `ExperimentConfig`)]: one per entry of the config's
    `variants` list (shared keys, then the variant's, then `--set`), or the config itself."""
    return [(name, resolve(variant, overrides))
            for name, variant in engine.expand_variants(raw, ExperimentConfig)]


def stage_config(run_dir: PathLike, method: str, overrides: Iterable[str] = ()
                 ) -> ExperimentConfig:
    """The second stage's config: the first run's config.yaml, its training keys replaced by
    the stage's (`STAGE_TRAIN` and class-balanced sampling for cRT and LWS, cross-entropy),
    a validation split where the first run had none, a `stage` section, then `overrides`."""
    import copy
    import pathlib

    run_dir = pathlib.Path(run_dir)
    if method not in STAGE_METHODS:
        raise ConfigError(f"Invalid value for argument `--method`. Expected one of "
                          f"{list(STAGE_METHODS)}. Received: --method={method!r}")
    for name in ("config.yaml", "model.keras"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir} has no {name}: expected the directory of a finished "
                              "`tfimb train` run (one run, not a folder of them).")
    raw = files.read(run_dir / "config.yaml") or {}
    if raw.get("stage"):
        raise ConfigError(f"{run_dir} is a second-stage run ({raw['stage'].get('method')}); "
                          f"give the first run's directory, {raw['stage'].get('from_run')}.")
    raw = copy.deepcopy(raw)
    data = raw.setdefault("data", {})
    if not data.get("validation_per_class"):
        data.update(validation_per_class=DEFAULT_VALIDATION, validation_from="left_out")
    data["sampling"] = "class_balanced" if method in TRAINED_STAGES else "instance"
    raw["loss"] = {"name": "softmax_cross_entropy"}
    if method in TRAINED_STAGES:
        raw["train"] = {**raw.get("train", {}), **STAGE_TRAIN}
        raw.setdefault("evaluation", {}).update(interval=1, every_epoch_from=None)
    raw["stage"] = {"method": method, "from_run": str(run_dir.resolve())}
    return resolve(raw, overrides)


def from_dict(raw: Any) -> ExperimentConfig:
    """Validated `ExperimentConfig` from a complete plain dict (the YAML layout)."""
    return engine.build(ExperimentConfig, raw or {}, "").validate().resolved()


def load(path: PathLike | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML config (`files.read`: UTF-8 or UTF-16 with a BOM, safe loader, each key once
    per mapping), apply `--set` overrides, validate."""
    raw: Any = {}
    if path is not None:
        raw = files.read(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"Invalid config file {path}: expected a mapping of "
                                     "sections.")
    return resolve(raw, overrides)
