"""`tfimb tune`: the `search` section of a search config (a training config plus `search`)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable, Literal

from tfimb import _checks, catalog
from tfimb.config import engine
from tfimb.config.engine import ConfigError
from tfimb.config.classify import ExperimentConfig, resolve

SEARCH_ALGORITHMS = ("grid", "random", "bayesian", "hyperband")


def losses_taking(parameter: str, names: Iterable[str], required: bool = False) -> list[str]:
    """The names among `names` whose loss takes `parameter` (only as a required one if asked),
    from the loss registry."""
    return [name for name in names if catalog.takes(name, parameter, required)]


def beta_losses(names: Iterable[str]) -> list[str]:
    """Losses whose class-balanced beta is searched (a required `beta`: the class-balanced ones)."""
    return losses_taking("beta", names, required=True)


def gamma_losses(names: Iterable[str]) -> list[str]:
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

    def validate(self) -> None:
        for key in ("loss", "beta", "gamma"):
            values = getattr(self, key)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"Invalid value for key `search.space.{key}`. Expected a "
                                  "non-empty list of distinct values. Received: "
                                  f"search.space.{key}={values!r}")
        names = catalog.NAMES
        for name in self.loss:
            engine.one_of("search.space.loss", name, names)
        for beta in self.beta:
            engine.in_range("search.space.beta", beta, _checks.check_beta, "0 <= beta < 1")
        for gamma in self.gamma:
            engine.in_range("search.space.gamma", gamma, _checks.check_gamma, "gamma >= 0 (finite)")


@dataclasses.dataclass
class SearchConfig:
    algorithm: str = "grid"
    objective: str = "val_all_accuracy"       # maximised (accuracies) or minimised (losses)
    max_trials: int = 20
    epochs_per_trial: typing.Optional[int] = None  # null: train.epochs (hyperband: max epochs)
    early_stopping_patience: typing.Optional[int] = None  # epochs without a better objective
    seed: int = 0                            # random, bayesian and hyperband sampling
    space: SearchSpaceConfig = dataclasses.field(default_factory=SearchSpaceConfig)

    def validate(self) -> SearchConfig:
        engine.one_of("search.algorithm", self.algorithm, SEARCH_ALGORITHMS)
        if not (isinstance(self.objective, str) and self.objective.startswith("val_")
                and self.objective.endswith(("accuracy", "loss"))):
            raise ConfigError("Invalid value for key `search.objective`. Expected a validation "
                              "metric: 'val_' + an accuracy (maximised) or a loss (minimised), "
                              "e.g. val_all_accuracy. Received: "
                              f"search.objective={self.objective!r}")
        engine.at_least("search.max_trials", self.max_trials, 1)
        for key in ("epochs_per_trial", "early_stopping_patience"):
            if getattr(self, key) is not None:
                engine.at_least(f"search.{key}", getattr(self, key), 1)
        self.space.validate()
        return self

    @property
    def direction(self) -> Literal["max", "min"]:
        return "max" if self.objective.endswith("accuracy") else "min"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_search(raw: Any, overrides: Iterable[str] = ()
                   ) -> tuple[ExperimentConfig, SearchConfig]:
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
    search = engine.merge(SearchConfig().to_dict(), search if isinstance(search, dict) else
                   engine.build(SearchConfig, search, "search"))
    training = []
    for text in overrides:
        parsed = engine.parse_override(text)
        if "search" in parsed:
            search = engine.merge(search, parsed["search"])
        else:
            training.append(text)
    return resolve(raw, training), engine.build(SearchConfig, search, "search").validate()
