"""Argument checks shared by the losses, metrics and helpers (NumPy only).

Every error follows Keras' form: the argument, what is valid, what was received.

The type aliases of tfimb's public signatures are defined here, once.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, Sequence, Union, cast

import numpy as np
from numpy.typing import ArrayLike

from tfimb import catalog

__all__ = ["ArrayLike", "ClassIds", "Normalization", "PathLike", "TensorLike", "Weighting"]

# `ArrayLike` (NumPy's): anything `np.asarray` accepts: a list or tuple (nested for 2-D data),
# a NumPy array, a scalar. Used for class counts, labels and predictions read with NumPy.
#: Class ids: a sequence of integers or an integer NumPy array.
ClassIds = Union[Sequence[int], np.ndarray]
#: A backend tensor, NumPy array or nested list. Keras 3 is backend-agnostic, so no backend's
#: tensor type can be named without importing that backend: this is `Any`.
TensorLike = Any
#: Batch reduction of the weighted losses (see `tfimb.losses`).
Normalization = Literal["weighted_mean", "num_classes"]
#: Weighting of the class-balanced sigmoid losses; the values are `tfimb.catalog.WEIGHTINGS`.
Weighting = Literal["example", "class"]
#: A file-system path: a string or a `pathlib.Path` (any `os.PathLike`).
PathLike = Union[str, os.PathLike[str]]


def invalid_value(arg: str, expected: str, received: Any) -> ValueError:
    """Return a ValueError in Keras' form for argument `arg`."""
    return ValueError(
        f"Invalid value for argument `{arg}`. Expected {expected}. "
        f"Received: {arg}={received!r}"
    )


def _as_float(arg: str, value: Any) -> float:
    if isinstance(value, bool):
        raise invalid_value(arg, "a real number", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise invalid_value(arg, "a real number", value) from None


def check_range(arg: str, value: Any, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Check `low <= value <= high` (bounds optional) and finiteness; return float(value)."""
    x = _as_float(arg, value)
    lo = "" if low is None else f"{low} {'<=' if low_inclusive else '<'} "
    hi = "" if high is None else f" {'<=' if high_inclusive else '<'} {high}"
    expected = f"{lo}{arg}{hi}" + ("" if high is not None else " (finite)")
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x >= low if low_inclusive else x > low
    if ok and high is not None:
        ok = x <= high if high_inclusive else x < high
    if not ok:
        raise invalid_value(arg, expected, value)
    return x


def check_int(arg: str, value: Any, low: int) -> int:
    """Check that `value` is an integer (not a bool) >= `low`; return it as an int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise invalid_value(arg, f"an integer >= {low}", value)
    return int(value)


def check_bool(arg: str, value: Any) -> bool:
    """Check that `value` is True or False; return it."""
    if not isinstance(value, bool):
        raise invalid_value(arg, "true or false", value)
    return value


def check_beta(beta: float) -> float:
    return check_range("beta", beta, 0.0, 1.0, high_inclusive=False)


def check_gamma(gamma: float) -> float:
    return check_range("gamma", gamma, 0.0)


def check_label_smoothing(label_smoothing: float) -> float:
    return check_range("label_smoothing", label_smoothing, 0.0, 1.0, high_inclusive=False)


NORMALIZATIONS = ("weighted_mean", "num_classes")


def check_normalization(normalization: str) -> Normalization:
    if normalization not in NORMALIZATIONS:
        raise invalid_value(
            "normalization", f"one of {NORMALIZATIONS}", normalization
        )
    return cast(Normalization, normalization)


def check_weighting(weighting: str) -> Weighting:
    """Check the `weighting` of a class-balanced sigmoid loss (`tfimb.catalog.WEIGHTINGS`)."""
    if not isinstance(weighting, str) or weighting not in catalog.WEIGHTINGS:
        raise invalid_value("weighting", f"one of {catalog.WEIGHTINGS}", weighting)
    return cast(Weighting, weighting)


def check_counts(counts: ArrayLike, arg: str = "counts") -> np.ndarray:
    """Validate per-class training counts; return them as a float64 NumPy vector.

    Counts must come from the whole training set (never from one batch): a 1-D sequence of
    at least two positive, finite numbers, one per class.
    """
    try:
        array = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise invalid_value(arg, "a 1-D sequence of positive numbers, one per class",
                            counts) from None
    if array.ndim != 1:
        raise ValueError(
            f"Invalid value for argument `{arg}`. Expected a 1-D sequence with one count "
            f"per class. Received: {arg}={counts!r} (shape {array.shape})"
        )
    if array.size < 2:
        raise invalid_value(
            arg, "at least two classes (one training count per class)", counts
        )
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array)).tolist()
        raise invalid_value(arg, f"finite counts (classes {bad} are not finite)", counts)
    if np.any(array != np.round(array)):
        bad = np.flatnonzero(array != np.round(array)).tolist()
        raise ValueError(
            f"Invalid value for argument `{arg}`. Expected whole numbers of training examples "
            f"per class (classes {bad} are not). Received: {arg}={counts!r}")
    if np.any(array <= 0):
        bad = np.flatnonzero(array <= 0).tolist()
        raise ValueError(
            f"Invalid value for argument `{arg}`. Expected every count > 0. Classes {bad} "
            f"have no (or a negative number of) training examples. Received: {arg}={counts!r}. "
            "Count over the whole training set, not one batch. A class that truly has no "
            "training examples cannot be re-weighted: drop it and relabel the remaining "
            "classes 0..C-2, or give it a count of 1 if it should still be predictable."
        )
    return array


def check_classes(arg: str, classes: ClassIds, num_classes: int | None = None,
                  allow_empty: bool = False) -> list[int]:
    """Validate a list of distinct class ids in [0, num_classes); return a sorted int list."""
    try:
        array = np.asarray(classes)
    except (TypeError, ValueError):
        raise invalid_value(arg, "a sequence of integer class ids", classes) from None
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise invalid_value(arg, "a 1-D sequence of integer class ids", classes)
    if array.size == 0 and not allow_empty:
        raise invalid_value(arg, "at least one class id", classes)
    if len(set(array.tolist())) != array.size:
        raise invalid_value(arg, "distinct class ids", classes)
    if array.size and (array.min() < 0 or (num_classes is not None and array.max() >= num_classes)):
        upper = "" if num_classes is None else f" < num_classes={num_classes}"
        raise invalid_value(arg, f"class ids with 0 <= id{upper}", classes)
    return sorted(int(c) for c in array.tolist())
