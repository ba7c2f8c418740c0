"""The imbalance: how many training examples each class keeps, and which ones, from labels alone.

Subsampling is deterministic by `seed`: each class's examples are shuffled by a NumPy generator
seeded with `seed`, the first `validation_per_class` go to the validation split (balanced, like
the test split, and never taken from it), and the imbalanced training set takes the next ones.
With `data.validation_from: left_out` the training set takes the first ones, as without a
validation split, and the validation split the next `validation_per_class` that it leaves out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tfimb import _checks
from tfimb._checks import ArrayLike
from tfimb.data.splits import DataError

if TYPE_CHECKING:
    from tfimb.config import ImbalanceConfig


def long_tail_counts(n_max: int, num_classes: int, factor: float) -> np.ndarray:
    """Cui et al.'s exponential profile: class c keeps `int(n_max * factor^(-c / (C - 1)))`.

    >>> long_tail_counts(5000, 10, 100).tolist()
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    exponents = np.arange(num_classes) / (num_classes - 1)
    return np.floor(n_max * np.power(float(factor), -exponents) + 1e-9).astype(np.int64)


def target_counts(available: ArrayLike, imbalance: ImbalanceConfig | None) -> np.ndarray:
    """Training images to keep per class, from the available counts and the imbalance config."""
    available = np.asarray(available, np.int64)
    num_classes = len(available)
    if imbalance is None:
        return available.copy()
    if imbalance.long_tail_factor is not None:
        return long_tail_counts(int(available.min()), num_classes, imbalance.long_tail_factor)
    try:
        minority = _checks.check_classes("imbalance.minority", imbalance.minority or [],
                                         num_classes, allow_empty=True)
    except ValueError as error:  # A class index the data does not have: say which key.
        raise DataError(str(error).replace("for argument `", "for key `", 1)) from None
    wanted = available.copy()
    for c in range(num_classes):
        if c in minority:
            wanted[c] = imbalance.minority_count
        elif imbalance.majority_count is not None:
            wanted[c] = min(imbalance.majority_count, available[c])
    return wanted


def subsample(labels: np.ndarray, validation_per_class: int, imbalance: ImbalanceConfig | None,
              seed: int, num_classes: int, validation_from: str = "training"
              ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) index arrays into a split with `labels`, deterministic by seed:
    labels alone decide, so a streamed split is subsampled without reading an image.

    `validation_from="training"` carves `validation_per_class` images of every class before
    the imbalance (the imbalance is then computed from what is left); `"left_out"` takes them
    from the images the imbalance leaves out, so the training set is exactly the one without a
    validation split (a class the imbalance keeps whole, like CIFAR-10-LT's head class, gives
    fewer, or none: the split is balanced where the data allows)."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    if validation_from == "left_out":
        train, _ = subsample(labels, 0, imbalance, seed, num_classes)
        wanted = np.bincount(labels[train], minlength=num_classes)
        validation = np.concatenate([p[n:n + validation_per_class]
                                     for p, n in zip(per_class, wanted)])
        return train, np.sort(validation).astype(train.dtype)
    available = np.array([len(p) for p in per_class]) - validation_per_class
    short = np.flatnonzero(available < 1)
    if validation_per_class and short.size:  # (A class with no image at all: the caller's.)
        raise DataError(f"Invalid value for key `data.validation_per_class`. Classes "
                        f"{_few(short.tolist())} have only "
                        f"{_few([len(per_class[c]) for c in short])} training images; leave at "
                        "least one for training. Received: "
                        f"data.validation_per_class={validation_per_class}")
    available = np.maximum(available, 0)
    wanted = target_counts(available, imbalance)
    too_many = np.flatnonzero(wanted > available)
    if too_many.size:
        c = int(too_many[0])
        raise DataError(f"Class {c} has {available[c]} training images available"
                        f"{' after the validation carve-out' if validation_per_class else ''}, "
                        f"fewer than the {wanted[c]} asked for by the imbalance config.")
    validation = np.concatenate([p[:validation_per_class] for p in per_class])
    train = np.concatenate([p[validation_per_class: validation_per_class + n]
                            for p, n in zip(per_class, wanted)])
    return np.sort(train), np.sort(validation)


def _few(items: list) -> str:
    """A list for a message: the first ten items, then how many more."""
    return str(items) if len(items) <= 10 else f"{items[:10]} and {len(items) - 10} more"
