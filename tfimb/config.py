"""Typed experiment configs, read from YAML (safe loader) and overridden by `--set key=value`.

A config file has the sections of `ExperimentConfig`; every key is optional and defaults to the
imbalanced CIFAR-10 protocol. Unknown keys are errors that list the valid ones. `--set` takes a
dotted key and a YAML value: `--set train.epochs=10 --set loss.beta=0.999 --set imbalance=null`.

    data:      {source: tfds | folder | digits | auto, name: cifar10, dir: PATH, validation_per_class: 0, seed: 0}
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
    evaluation: {minority: null}     # minority group of the table; default imbalance.minority
"""

import copy
import dataclasses
import inspect
import os
import typing

import yaml

from tfimb import _checks, catalog


class ConfigError(ValueError):
    """A config that cannot be used, with the offending key and what is valid."""


DATA_DIR_VARIABLE = "TFIMB_DATA_DIR"


@dataclasses.dataclass
class DataConfig:
    # tfds | folder | digits (scikit-learn's, ships offline) | auto: an image folder from
    # `data.dir` or $TFIMB_DATA_DIR when either is set, else tfds (resolved when the config is,
    # so a run's config.yaml records what it read).
    source: str = "tfds"
    name: str = "cifar10"            # tfds data set name
    dir: typing.Optional[str] = None  # folder root (`root/<split>/<class>/*.jpg`) or tfds data_dir
    validation_per_class: int = 0    # carved from training data, before the imbalance
    seed: int = 0
    train_split: str = "train"
    test_split: str = "test"
    image_size: typing.Optional[int] = None  # resize folder images to this square size
    augment: bool = True             # pad-4 random crop + horizontal flip

    def concrete(self):
        """`auto` resolved to `folder` (data.dir, else $TFIMB_DATA_DIR) or `tfds`."""
        if self.source != "auto":
            return self
        folder = self.dir or os.environ.get(DATA_DIR_VARIABLE) or None
        return dataclasses.replace(self, source="folder" if folder else "tfds", dir=folder)

    def validate(self):
        _one_of("data.source", self.source, ("tfds", "folder", "digits", "auto"))
        if self.source == "folder" and not self.dir:
            raise ConfigError("Invalid value for key `data.dir`. Expected the folder root "
                              "when data.source is 'folder'. Received: data.dir=None")
        _at_least("data.validation_per_class", self.validation_per_class, 0)


@dataclasses.dataclass
class ImbalanceConfig:
    minority: typing.Optional[typing.List[int]] = None
    minority_count: typing.Optional[int] = None
    majority_count: typing.Optional[int] = None
    long_tail_factor: typing.Optional[float] = None

    def validate(self):
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
            _checks.check_classes("imbalance.minority", self.minority)
        for key in ("minority_count", "majority_count"):
            if getattr(self, key) is not None:
                _at_least(f"imbalance.{key}", getattr(self, key), 1)


@dataclasses.dataclass
class ModelConfig:
    name: str = "resnet18_cifar"
    head: str = "dense"              # dense | cosine (for the LDAM loss)

    def validate(self):
        from tfimb.models import resnet  # Keras only; cheap enough at config time.
        _one_of("model.name", self.name, tuple(resnet.MODELS))
        _one_of("model.head", self.head, resnet.HEADS)


@dataclasses.dataclass
class LossConfig:
    """`name` plus the loss's own keyword arguments (its `counts` come from the data)."""

    name: str = "softmax_cross_entropy"
    options: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    drw_epoch: typing.Optional[int] = None  # deferred re-weighting starts at this epoch (0-based)
    drw_beta: float = 0.9999

    def validate(self):
        names = catalog.NAMES
        _one_of("loss.name", self.name, names)
        from tfimb import losses  # Keras; imported only once a config is validated.
        params = inspect.signature(losses.LOSSES[self.name]).parameters
        valid = sorted(k for k in params if k not in ("counts", "name", "reduction", "dtype"))
        for key in self.options:
            if key not in valid:
                raise ConfigError(f"Unknown key `loss.{key}` for loss {self.name!r}. Valid keys: "
                                  f"{', '.join(['name', 'drw_epoch', 'drw_beta'] + valid)}")
        if self.drw_epoch is not None:
            _at_least("loss.drw_epoch", self.drw_epoch, 0)
            _checks.check_beta(self.drw_beta)

    @property
    def needs_counts(self):
        from tfimb import losses
        return "counts" in inspect.signature(losses.LOSSES[self.name]).parameters


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 25
    batch_size: int = 128            # global batch, split across replicas
    momentum: float = 0.9
    weight_decay: float = 5.0e-4     # coupled L2 as PyTorch's SGD(weight_decay=...)
    lr_values: typing.List[float] = dataclasses.field(default_factory=lambda: [0.1, 0.01, 0.001])
    lr_boundaries: typing.List[int] = dataclasses.field(default_factory=lambda: [15, 20])
    warmup_epochs: int = 0           # linear warm-up to lr_values[0] (Cui et al. use 5)
    seed: int = 0
    steps_per_execution: int = 1
    checkpoint_every: typing.Optional[int] = None  # steps; a checkpoint every epoch regardless

    def validate(self):
        _at_least("train.epochs", self.epochs, 1)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.warmup_epochs", self.warmup_epochs, 0)
        _at_least("train.steps_per_execution", self.steps_per_execution, 1)
        if self.checkpoint_every is not None:
            _at_least("train.checkpoint_every", self.checkpoint_every, 1)
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
class DistributeConfig:
    strategy: str = "default"        # default | mirrored | multi_worker (hosts from TF_CONFIG)
    num_cpu_devices: int = 2         # logical CPU replicas for `mirrored` when there is no GPU
    # Batch-norm statistics over the global batch (all replicas) rather than each replica's
    # share, at one all-reduce per batch-norm layer and step; one device then trains the
    # weights N workers train (both compute the moments as E[x^2] - E[x]^2). Classifiers only.
    sync_batch_norm: bool = False

    def validate(self):
        _one_of("distribute.strategy", self.strategy, STRATEGIES)
        _at_least("distribute.num_cpu_devices", self.num_cpu_devices, 1)
        if not isinstance(self.sync_batch_norm, bool):
            raise ConfigError("Invalid value for key `distribute.sync_batch_norm`. Expected true "
                              f"or false. Received: {self.sync_batch_norm!r}")


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

    def validate(self):
        if self.minority is not None:
            _checks.check_classes("evaluation.minority", self.minority)
        _at_least("evaluation.interval", self.interval, 1)
        if self.every_epoch_from is not None:
            _at_least("evaluation.every_epoch_from", self.every_epoch_from, 0)

    def evaluates(self, epoch, epochs):
        """Whether 0-based `epoch` of `epochs` is evaluated."""
        return ((epoch + 1) % self.interval == 0 or epoch == epochs - 1
                or (self.every_epoch_from is not None and epoch >= self.every_epoch_from))


PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker")


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

    def validate(self):
        for section in (self.data, self.imbalance, self.model, self.loss, self.train,
                        self.distribute, self.evaluation):
            if section is not None:
                section.validate()
        _one_of("mixed_precision", self.mixed_precision, PRECISIONS)
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

    def to_dict(self):
        """Plain dict in the YAML layout (loss options flattened into `loss`)."""
        out = dataclasses.asdict(self)
        loss = out.pop("loss")
        out["loss"] = {"name": loss["name"], **loss["options"]}
        if loss["drw_epoch"] is not None:
            out["loss"].update(drw_epoch=loss["drw_epoch"], drw_beta=loss["drw_beta"])
        return {key: out[key] for key in ("data", "imbalance", "model", "loss", "train",
                                          "mixed_precision", "distribute", "evaluation")}


# ---------------------------------------------------------------------------------------------
# `tfimb tune`: the `search` section of a search config (a training config plus `search`).

SEARCH_ALGORITHMS = ("grid", "random", "bayesian", "hyperband")


def losses_taking(parameter, names, required=False):
    """The names among `names` whose loss takes `parameter` (only as a required one if asked)."""
    from tfimb import losses

    out = []
    for name in names:
        param = inspect.signature(losses.LOSSES[name]).parameters.get(parameter)
        if param is not None and (not required or param.default is inspect.Parameter.empty):
            out.append(name)
    return out


def beta_losses(names):
    """Losses whose class-balanced beta is searched (a required `beta`: the class-balanced ones)."""
    return losses_taking("beta", names, required=True)


def gamma_losses(names):
    """Losses whose focal gamma is searched."""
    return losses_taking("gamma", names)


@dataclasses.dataclass
class SearchSpaceConfig:
    """Values tried: `beta` applies to the class-balanced losses, `gamma` to the focal ones."""

    loss: typing.List[str] = dataclasses.field(
        default_factory=lambda: ["class_balanced_softmax", "class_balanced_focal"])
    beta: typing.List[float] = dataclasses.field(
        default_factory=lambda: [0.9, 0.99, 0.999, 0.9999])
    gamma: typing.List[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])

    def validate(self):
        for key in ("loss", "beta", "gamma"):
            values = getattr(self, key)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"Invalid value for key `search.space.{key}`. Expected a "
                                  "non-empty list of distinct values. Received: "
                                  f"search.space.{key}={values!r}")
        names = catalog.NAMES
        for name in self.loss:
            _one_of("search.space.loss", name, names)
        for beta in self.beta:
            _in_range("search.space.beta", beta, _checks.check_beta, "0 <= beta < 1")
        for gamma in self.gamma:
            _in_range("search.space.gamma", gamma, _checks.check_gamma, "gamma >= 0 (finite)")


@dataclasses.dataclass
class SearchConfig:
    algorithm: str = "grid"
    objective: str = "val_all_accuracy"       # maximised (accuracies) or minimised (losses)
    max_trials: int = 20
    epochs_per_trial: typing.Optional[int] = None  # null: train.epochs (hyperband: max epochs)
    early_stopping_patience: typing.Optional[int] = None  # epochs without a better objective
    seed: int = 0                            # random, bayesian and hyperband sampling
    space: SearchSpaceConfig = dataclasses.field(default_factory=SearchSpaceConfig)

    def validate(self):
        _one_of("search.algorithm", self.algorithm, SEARCH_ALGORITHMS)
        if not (isinstance(self.objective, str) and self.objective.startswith("val_")
                and self.objective.endswith(("accuracy", "loss"))):
            raise ConfigError("Invalid value for key `search.objective`. Expected a validation "
                              "metric: 'val_' + an accuracy (maximised) or a loss (minimised), "
                              "e.g. val_all_accuracy. Received: "
                              f"search.objective={self.objective!r}")
        _at_least("search.max_trials", self.max_trials, 1)
        for key in ("epochs_per_trial", "early_stopping_patience"):
            if getattr(self, key) is not None:
                _at_least(f"search.{key}", getattr(self, key), 1)
        self.space.validate()
        return self

    @property
    def direction(self):
        return "max" if self.objective.endswith("accuracy") else "min"

    def to_dict(self):
        return dataclasses.asdict(self)


def resolve_search(raw, overrides=()):
    """(ExperimentConfig, SearchConfig) from a search config dict and `--set` overrides.

    `--set search.max_trials=4` reaches the search section; every other key the training config.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid config: expected a mapping of sections. Received: {raw!r}")
    raw = dict(raw)
    search = raw.pop("search", None)
    if search is None:
        raise ConfigError("Missing section `search` in a search config (algorithm, objective, "
                          "max_trials, epochs_per_trial, early_stopping_patience, seed, space).")
    search = merge(SearchConfig().to_dict(), search if isinstance(search, dict) else
                   _build(SearchConfig, search, "search"))
    training = []
    for text in overrides:
        parsed = parse_override(text)
        if "search" in parsed:
            search = merge(search, parsed["search"])
        else:
            training.append(text)
    return resolve(raw, training), _build(SearchConfig, search, "search").validate()


def _in_range(key, value, check, expected):
    try:
        check(value)
    except ValueError:
        raise ConfigError(f"Invalid value for key `{key}`. Expected {expected}. "
                          f"Received: {key}={value!r}") from None


# ---------------------------------------------------------------------------------------------
# `tfimb flow train`: RealNVP configs.


@dataclasses.dataclass
class FlowModelConfig:
    num_scales: int = 2              # the paper's CIFAR-10 model: 2 scales, 8 blocks, 64 maps
    num_blocks: int = 8
    num_filters: int = 64
    momentum: float = 0.9            # running statistics of the batch-norm bijectors
    epsilon: float = 1.0e-4
    alpha: float = 0.05              # logit transform

    def validate(self):
        for key in ("num_scales", "num_blocks", "num_filters"):
            _at_least(f"model.{key}", getattr(self, key), 1)
        if not 0 <= self.momentum < 1:
            raise ConfigError("Invalid value for key `model.momentum`. Expected 0 <= momentum "
                              f"< 1. Received: model.momentum={self.momentum}")
        if not 0 < self.alpha < 0.5 or not self.epsilon > 0:
            raise ConfigError("Invalid value for keys `model.alpha` / `model.epsilon`. Expected "
                              "0 < alpha < 0.5 and epsilon > 0. Received: "
                              f"alpha={self.alpha}, epsilon={self.epsilon}")


@dataclasses.dataclass
class FlowTrainConfig:
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1.0e-3    # Adam, default betas
    l2: float = 5.0e-5               # on the weight-norm scales only
    clip_norm: float = 100.0         # global gradient norm
    flip: bool = True                # random horizontal flips
    seed: int = 0
    steps_per_execution: int = 1
    checkpoint_every: typing.Optional[int] = None  # steps; a checkpoint every epoch regardless
    max_train_images: typing.Optional[int] = None  # a subset, for CPU-sized runs
    max_eval_images: typing.Optional[int] = None

    def validate(self):
        _at_least("train.epochs", self.epochs, 1)
        _at_least("train.batch_size", self.batch_size, 2)  # Batch statistics need 2.
        _at_least("train.steps_per_execution", self.steps_per_execution, 1)
        if self.checkpoint_every is not None:
            _at_least("train.checkpoint_every", self.checkpoint_every, 1)
        for key in ("max_train_images", "max_eval_images"):
            if getattr(self, key) is not None:
                _at_least(f"train.{key}", getattr(self, key), 2)
        for key in ("learning_rate", "clip_norm"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"Invalid value for key `train.{key}`. Expected a number > 0. "
                                  f"Received: train.{key}={getattr(self, key)}")
        if self.l2 < 0:
            raise ConfigError("Invalid value for key `train.l2`. Expected a number >= 0. "
                              f"Received: train.l2={self.l2}")


@dataclasses.dataclass
class FlowConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: FlowModelConfig = dataclasses.field(default_factory=FlowModelConfig)
    train: FlowTrainConfig = dataclasses.field(default_factory=FlowTrainConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)

    def validate(self):
        for section in (self.data, self.model, self.train, self.distribute):
            section.validate()
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


def resolve_flow(raw, overrides=()):
    """A validated `FlowConfig`: defaults, then the YAML dict, then `--set` overrides."""
    return _resolve(FlowConfig, raw, overrides)


def dump_flow(config):
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _one_of(key, value, valid):
    if value not in valid:
        raise ConfigError(f"Invalid value for key `{key}`. Expected one of {list(valid)}. "
                          f"Received: {key}={value!r}")


def _at_least(key, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"Invalid value for key `{key}`. Expected an integer >= {low}. "
                          f"Received: {key}={value!r}")


# ---------------------------------------------------------------------------------------------
# dict -> dataclass with type checks and unknown-key errors.


def _convert(value, annotation, key):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _convert(value, [a for a in args if a is not type(None)][0], key)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"Invalid value for key `{key}`. Expected a list. "
                              f"Received: {key}={value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is typing.Any or (isinstance(value, annotation)
                                    and not (annotation is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"Invalid value for key `{key}`. Expected {annotation.__name__}. "
                      f"Received: {key}={value!r}")


def _build(cls, raw, prefix):
    if not isinstance(raw, dict):
        raise ConfigError(f"Invalid value for section `{prefix}`. Expected a mapping of keys "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}. "
                          f"Received: {prefix}={raw!r}")
    raw = dict(raw)
    if cls is LossConfig:  # Loss arguments sit beside `name`: gather them into `options`.
        known = {"name", "drw_epoch", "drw_beta"}
        raw = {**{k: raw[k] for k in raw if k in known},
               "options": {k: v for k, v in raw.items() if k not in known}}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{prefix}." if prefix else ""
            raise ConfigError(f"Unknown key `{where}{key}`. Valid keys: "
                              f"{', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def from_dict(raw):
    """Validated `ExperimentConfig` from a complete plain dict (the YAML layout)."""
    return _build(ExperimentConfig, raw or {}, "").validate()


def parse_override(text):
    """`"a.b=value"` -> `{"a": {"b": value}}`, the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"Invalid value for `--set`. Expected key=value with a dotted key, "
                          f"e.g. train.epochs=10. Received: {text!r}")
    key, value = text.split("=", 1)
    nested = yaml.safe_load(value)
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


_GROUP_KEYS = ("minority", "minority_count", "majority_count")


def _merge_imbalance(base, update):
    """The imbalance section is one of two modes: a long-tail factor drops the group keys and
    group keys drop the long-tail factor, so `{long_tail_factor: 100}` needs nothing else."""
    if update is None or not isinstance(base, dict) or not isinstance(update, dict):
        return copy.deepcopy(update)
    if update.get("long_tail_factor") is not None:
        base = {}
    elif any(k in update for k in _GROUP_KEYS):
        base = {k: v for k, v in base.items() if k != "long_tail_factor"}
    return {**base, **update}


def merge(base, update):
    """Deep-merge `update` into `base` (dicts key by key; anything else replaces)."""
    if not isinstance(base, dict) or not isinstance(update, dict):
        return copy.deepcopy(update)
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key == "imbalance":
            out[key] = _merge_imbalance(out.get(key), value)
        else:
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
    return out


def _resolve(cls, raw, overrides):
    """Defaults of `cls`, then the YAML dict, then `--set` overrides, merged key by key;
    validated."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"Invalid config: expected a mapping of sections. Received: {raw!r}")
    _build(cls, raw or {}, "")  # Unknown keys in the file are reported as such.
    merged = merge(cls().to_dict(), raw or {})
    for text in overrides:
        merged = merge(merged, parse_override(text))
    config = _build(cls, merged, "").validate()
    if isinstance(getattr(config, "data", None), DataConfig):
        config.data = config.data.concrete()
    return config


def resolve(raw, overrides=()):
    """A validated `ExperimentConfig`: defaults, then the YAML dict, then `--set` overrides."""
    return _resolve(ExperimentConfig, raw, overrides)


def load(path=None, overrides=()):
    """Read a YAML config (safe loader), apply `--set` overrides, validate."""
    raw = {}
    if path is not None:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"Invalid config file {path}: expected a mapping of sections.")
    return resolve(raw, overrides)


def dump(config):
    """The resolved config as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
