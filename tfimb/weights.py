"""Class counts, effective numbers and class-balanced weights (NumPy, float64).

Nothing here imports Keras or TensorFlow: the helpers run anywhere, and `class_counts` reads a
`tf.data.Dataset` through its own `as_numpy_iterator`, so TensorFlow is only touched when the
caller already passes a TensorFlow object.

Reference: Cui, Jia, Lin, Song, Belongie. "Class-Balanced Loss Based on Effective Number of
Samples." CVPR 2019. https://arxiv.org/abs/1901.05555
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from tfimb import _checks
from tfimb._checks import ArrayLike

if TYPE_CHECKING:
    import tensorflow as tf

#: `normalization` of the weight helpers: rescale to sum to C, or leave unscaled.
WeightNormalization = Literal["num_classes", "none"]

WEIGHT_NORMALIZATIONS = ("num_classes", "none")


def effective_number(counts: ArrayLike, beta: float) -> np.ndarray:
    """Effective number of samples per class, `E_n = (1 - beta^n) / (1 - beta)`.

    `E_1 = 1`; `E_n -> 1 / (1 - beta)` as `n -> infinity`; `beta = 0` gives `E_n = 1` (no
    re-weighting) and `beta -> 1` gives `E_n -> n` (inverse class frequency). Computed in float64
    as `-expm1(n * log(beta)) / (1 - beta)`, which stays accurate for beta close to 1.

    Args:
        counts: 1-D sequence of positive training counts, one per class.
        beta: float, `0 <= beta < 1`.

    Returns:
        float64 NumPy array of shape `(num_classes,)`.

    Example:

    >>> tfimb.effective_number([1, 10, 1000], beta=0.9).round(4).tolist()
    [1.0, 6.5132, 10.0]
    """
    n = _checks.check_counts(counts)
    beta = _checks.check_beta(beta)
    if beta == 0.0:
        return np.ones_like(n)
    return -np.expm1(n * np.log(beta)) / (1.0 - beta)


def class_balanced_weights(counts: ArrayLike, beta: float,
                           normalization: WeightNormalization = "num_classes") -> np.ndarray:
    """Class-balanced weights `w_c = 1 / E_{n_c} = (1 - beta) / (1 - beta^{n_c})`, float64.

    Args:
        counts: 1-D sequence of positive training counts over the whole training set.
        beta: float, `0 <= beta < 1`. `0` gives equal weights, `beta -> 1` gives weights
            proportional to `1 / n_c`.
        normalization: `"num_classes"` (default) rescales the weights to sum to the number of
            classes C, as the class-balanced authors' code did, so the loss keeps the scale of
            plain cross-entropy; `"none"` returns `1 / E_{n_c}` unscaled. (The losses'
            `normalization="weighted_mean"` divides by the batch's total weight, so the scale of
            the weights cancels there.)

    Returns:
        float64 NumPy array of shape `(num_classes,)`.

    Example:

    >>> tfimb.class_balanced_weights([2, 3, 1, 2, 2], beta=0.9999).round(6).tolist()
    [0.882363, 0.588272, 1.764638, 0.882363, 0.882363]
    """
    _check_weight_normalization(normalization)
    return _normalized(1.0 / effective_number(counts, beta), normalization)


def inverse_frequency_weights(counts: ArrayLike,
                              normalization: WeightNormalization = "num_classes") -> np.ndarray:
    """Inverse class frequency weights `w_c = 1 / n_c` (the `beta -> 1` limit), float64."""
    _check_weight_normalization(normalization)
    return _normalized(1.0 / _checks.check_counts(counts), normalization)


def _check_weight_normalization(normalization: str) -> None:
    if normalization not in WEIGHT_NORMALIZATIONS:
        raise _checks.invalid_value(
            "normalization", f"one of {WEIGHT_NORMALIZATIONS}", normalization
        )


def _normalized(weights: np.ndarray, normalization: str) -> np.ndarray:
    """Rescale weights to sum to C (`"num_classes"`) or leave them (`"none"`)."""
    if normalization == "num_classes":
        weights = weights * (weights.size / weights.sum())
    return weights


def _count_array(labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts of one NumPy array of sparse (`(N,)`, `(N, 1)`) or one-hot (`(N, C)`) labels."""
    labels = np.asarray(labels)
    if labels.ndim >= 2 and labels.shape[-1] == num_classes and num_classes > 1:
        onehot = labels.reshape(-1, num_classes).astype(np.float64)
        hard = np.all((onehot == 0) | (onehot == 1)) and np.all(onehot.sum(axis=1) == 1)
        if not hard:
            raise ValueError(
                "Invalid value for argument `labels`. Expected sparse class ids or one-hot rows "
                f"(exactly one 1 per row). Received: labels with rows such as "
                f"{onehot[~np.all((onehot == 0) | (onehot == 1), axis=1) | (onehot.sum(1) != 1)][:2].tolist()}")
        return onehot.sum(axis=0).astype(np.int64)
    flat = labels.reshape(-1)
    if flat.size == 0:
        return np.zeros(num_classes, np.int64)
    if not np.issubdtype(flat.dtype, np.integer):
        if not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)):
            bad = flat[~np.isfinite(flat) | (flat != np.round(flat))]
            raise ValueError("Invalid value for argument `labels`. Expected integer class ids. "
                             f"Received: labels containing {bad[:5].tolist()}")
        flat = flat.astype(np.int64)
    bad = flat[(flat < 0) | (flat >= num_classes)]
    if bad.size:
        raise ValueError(
            f"Invalid value for argument `labels`. Expected class ids in [0, {num_classes}) "
            f"(num_classes={num_classes}). Received: labels containing "
            f"{np.unique(bad)[:10].tolist()}")
    return np.bincount(flat, minlength=num_classes).astype(np.int64)


def class_counts(labels: ArrayLike | tf.data.Dataset, num_classes: int,
                 multi_label: bool = False) -> np.ndarray:
    """Number of examples of each class, from labels or from a whole dataset.

    Use this on the whole training set: class-balanced losses need dataset counts, never
    per-batch ones (a batch without some class would give it a zero count).

    Args:
        labels: NumPy array (or list) of sparse integer labels `(N,)` / `(N, 1)` or one-hot
            labels `(N, num_classes)`; or a `tf.data.Dataset` whose elements are `(x, y)` or
            `(x, y, sample_weight)`, batched or not, with labels in either form.
        num_classes: int, number of classes C.
        multi_label: labels are multi-hot rows `(N, num_classes)` of 0/1 (any number of
            positives per example, for the sigmoid losses): count the positives of each class.
            NumPy arrays and lists only.

    Returns:
        int64 NumPy array of shape `(num_classes,)`. Zero entries are kept: pass the result to a
        loss only once every class has training examples (the loss says what to do otherwise).

    Example:

    >>> tfimb.class_counts(np.array([0, 2, 2, 1, 2]), num_classes=4).tolist()
    [1, 1, 3, 0]
    """
    num_classes = _checks.check_int("num_classes", num_classes, 1)
    if multi_label:
        return _count_multi_hot(labels, num_classes)
    if hasattr(labels, "as_numpy_iterator") and hasattr(labels, "element_spec"):
        return _count_dataset(labels, num_classes)
    return _count_array(labels, num_classes)


def _count_multi_hot(labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Positives per class of multi-hot rows `(N, num_classes)` of zeros and ones."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise ValueError(
            "Invalid value for argument `labels`. Expected multi-hot rows of shape "
            f"(N, {num_classes}) with multi_label=True. Received: labels of shape {labels.shape}")
    values = labels.astype(np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if np.any(bad):
        raise ValueError(
            "Invalid value for argument `labels`. Expected multi-hot rows of 0 and 1 with "
            f"multi_label=True. Received: labels containing {np.unique(values[bad])[:5].tolist()}")
    return values.sum(axis=0).astype(np.int64)


def _first_is_onehot(labels_only: tf.data.Dataset) -> bool:
    for first in labels_only.take(1).as_numpy_iterator():
        return bool(np.all((first == 0) | (first == 1)) and first.sum() == 1)
    return False


def _count_dataset(dataset: tf.data.Dataset, num_classes: int) -> np.ndarray:
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise _checks.invalid_value(
            "labels", "a tf.data.Dataset of (x, y) or (x, y, sample_weight) tuples",
            f"a dataset with element_spec={spec!r}"
        )
    label_spec = spec[1]
    labels_only = dataset.map(lambda *element: element[1])
    unbatched_sparse = label_spec.shape.rank == 0
    # A rank-1 label of static length C is an unbatched one-hot row, unless its first element
    # reads as a batch of sparse ids (a batch of exactly C labels with drop_remainder=True).
    unbatched_onehot = (label_spec.shape.rank == 1 and label_spec.shape[0] == num_classes
                        and _first_is_onehot(labels_only))
    if unbatched_sparse or unbatched_onehot:
        # Batch unbatched labels so the Python loop runs once per 8192 examples.
        labels_only = labels_only.batch(8192)
    total = np.zeros(num_classes, np.int64)
    for batch in labels_only.as_numpy_iterator():
        total += _count_array(batch, num_classes)
    return total
