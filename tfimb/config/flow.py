"""`tfimb flow train`: the RealNVP experiment's config (`FlowConfig`).

    data:      {source: digits | tfds | folder | auto, ...}     # as `tfimb train`'s
    imbalance: null (the data as it is) | {minority: [1, 4, 6], minority_count: 250}
               | {long_tail_factor: 100}                       # `tfimb train`'s section
    model:     {num_scales: 2, num_blocks: 8, num_filters: 64, ..., class_conditional: false}
    train:     {epochs: 100, batch_size: 64, ..., class_weighting: none | balanced}
    distribute: {strategy: default | mirrored | multi_worker, ...}
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable

from tfimb import _checks
from tfimb.config import engine
from tfimb.config.engine import ConfigError
from tfimb.config.classify import ImbalanceConfig
from tfimb.config.common import DataConfig, DistributeConfig

# The values of `train.class_weighting` (tfimb.flows.conditional.CLASS_WEIGHTINGS, which
# imports TensorFlow; tests/test_flows_conditional.py checks they agree).
CLASS_WEIGHTINGS = ("none", "balanced")
# The values of `model.scale_parameterisation` (tfimb.flows.realnvp.SCALE_PARAMETERISATIONS;
# tests/test_flows_options.py checks they agree).
SCALE_PARAMETERISATIONS = ("zero_tanh", "unit_tanh")
# The values of `model.normalization` (tfimb.flows.realnvp.NORMALIZATIONS, checked the same way).
NORMALIZATIONS = ("batch_norm", "none")
# The values of `model.weight_init` (tfimb.flows.realnvp.WEIGHT_INITS).
WEIGHT_INITS = ("unit", "pytorch")


@dataclasses.dataclass
class FlowModelConfig:
    num_scales: int = 2              # the paper's CIFAR-10 model: 2 scales, 8 blocks, 64 maps
    num_blocks: int = 8
    num_filters: int = 64
    momentum: float = 0.9            # running statistics of the batch-norm bijectors
    network_momentum: float = 0.99   # ... of the s/t networks' batch norms (PyTorch's: 0.9)
    epsilon: float = 1.0e-4
    alpha: float = 0.05              # logit transform
    # A latent N(mu_y, diag(sigma_y^2)) per class y (tfimb.flows.conditional); the data's
    # labels then feed training, evaluation and sampling.
    class_conditional: bool = False
    # Options of the public PyTorch RealNVP (chrischute/real-nvp), off by default (the paper's
    # network; tfimb.flows.RealNVP documents them): 1x1 skip convolutions summed into a 1x1
    # s/t output, an input batch norm and concatenated ReLU, doubled maps for channel
    # couplings, s = scale * tanh with the scale starting at 0 (zero_tanh) or 1 (unit_tanh),
    # and the bijector after every coupling: batch_norm (running statistics) or none.
    skip_connections: bool = False
    concat_relu: bool = False
    width_doubling: bool = False
    scale_parameterisation: str = "zero_tanh"
    normalization: str = "batch_norm"
    # The weight-normalised convolutions' start: unit (unit-norm, zero bias) or pytorch (the
    # peer's: torch.nn.utils.weight_norm of a fresh nn.Conv2d).
    weight_init: str = "unit"

    def validate(self) -> None:
        for key in ("skip_connections", "concat_relu", "width_doubling"):
            engine.check(_checks.check_bool, f"model.{key}", getattr(self, key))
        engine.one_of("model.scale_parameterisation", self.scale_parameterisation,
                      SCALE_PARAMETERISATIONS)
        engine.one_of("model.normalization", self.normalization, NORMALIZATIONS)
        engine.one_of("model.weight_init", self.weight_init, WEIGHT_INITS)
        for key in ("num_scales", "num_blocks", "num_filters"):
            engine.at_least(f"model.{key}", getattr(self, key), 1)
        for key in ("momentum", "network_momentum"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"Invalid value for key `model.{key}`. Expected 0 <= {key} "
                                  f"< 1. Received: model.{key}={getattr(self, key)}")
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
    # none | balanced: each example's bits/dim in the loss times n / (C n_y) (mean 1 over the
    # training set); the reported bits/dim stays the unweighted mean.
    class_weighting: str = "none"

    def validate(self) -> None:
        engine.at_least("train.epochs", self.epochs, 1)
        engine.at_least("train.batch_size", self.batch_size, 2)  # Batch statistics need 2.
        engine.at_least("train.steps_per_execution", self.steps_per_execution, 1)
        if self.checkpoint_every is not None:
            engine.at_least("train.checkpoint_every", self.checkpoint_every, 1)
        for key in ("max_train_images", "max_eval_images"):
            if getattr(self, key) is not None:
                engine.at_least(f"train.{key}", getattr(self, key), 2)
        for key in ("learning_rate", "clip_norm"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"Invalid value for key `train.{key}`. Expected a number > 0. "
                                  f"Received: train.{key}={getattr(self, key)}")
        if self.l2 < 0:
            raise ConfigError("Invalid value for key `train.l2`. Expected a number >= 0. "
                              f"Received: train.l2={self.l2}")
        engine.one_of("train.class_weighting", self.class_weighting, CLASS_WEIGHTINGS)


@dataclasses.dataclass
class FlowConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    # null: the data as it is (flows model the training distribution they are given); a
    # section cuts the training split as `tfimb train` does (minority classes 1, 4, 6 to 250).
    imbalance: typing.Optional[ImbalanceConfig] = None
    model: FlowModelConfig = dataclasses.field(default_factory=FlowModelConfig)
    train: FlowTrainConfig = dataclasses.field(default_factory=FlowTrainConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)

    def validate(self) -> FlowConfig:
        for section in (self.data, self.imbalance, self.model, self.train, self.distribute):
            if section is not None:
                section.validate()
        if self.data.stream is True:
            raise ConfigError("Invalid value for key `data.stream`. Expected auto or false: "
                              "flows train from images held in memory. Received: "
                              "data.stream=True")
        if self.data.service is not None:
            raise ConfigError("Invalid value for key `data.service`. Expected null: flows "
                              "train from images held in memory. Received: "
                              f"data.service={self.data.service!r}")
        if self.data.sampling != "instance":
            raise ConfigError("Invalid value for key `data.sampling`. Expected 'instance': "
                              "flows draw every image once per epoch (class-aware sampling is "
                              "for classifiers). Received: "
                              f"data.sampling={self.data.sampling!r}")
        return self

    def resolved(self) -> FlowConfig:
        """The config with `data.source: auto` made concrete (what a run records)."""
        return dataclasses.replace(self, data=self.data.concrete())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_flow(raw: Any, overrides: Iterable[str] = ()) -> FlowConfig:
    """A validated `FlowConfig`: defaults, then the YAML dict, then `--set` overrides."""
    return engine.resolve_dataclass(FlowConfig, raw, overrides)


def dump_flow(config: FlowConfig) -> str:
    return engine.dump(config)
