"""Group accuracies for imbalanced classification (pure Keras 3, plus NumPy helpers).

* `GroupAccuracy(classes)`: accuracy over the examples whose true class is in `classes`.
* `group_accuracies(minority, num_classes)`: minority / majority / all accuracy, named
  `minority_accuracy`, `majority_accuracy`, `all_accuracy` (the three columns of the imbalanced
  CIFAR-10 table).
* `shot_accuracies(counts)`: many-shot (> 100 training images), medium-shot (20-100) and
  few-shot (< 20) accuracy, the long-tail convention.
* `confusion_matrix` and `per_class_accuracy`: NumPy, from predictions.
* Calibration of the top label: `ExpectedCalibrationError` (streaming, for `compile`), and in
  NumPy `expected_calibration_error`, `reliability` (the reliability diagram's bins) and
  `negative_log_likelihood`.

Example:

    model.compile(
        optimizer="sgd",
        loss=tfimb.ClassBalancedFocal(0.99, counts),
        metrics=tfimb.metrics.group_accuracies(minority=[1, 4, 6], num_classes=10),
    )
"""

from __future__ import annotations

from typing import Any

import numpy as np

import keras
from keras import ops

from tfimb import _checks
from tfimb._checks import ArrayLike, ClassIds, TensorLike


def _true_class(y_true: TensorLike, y_pred: TensorLike) -> TensorLike:
    """Integer true classes of shape `y_pred.shape[:-1]` from sparse or one-hot labels."""
    y_true = ops.convert_to_tensor(y_true)
    num_classes = y_pred.shape[-1]
    if len(y_true.shape) == len(y_pred.shape):
        if y_true.shape[-1] == num_classes and num_classes != 1:
            return ops.cast(ops.argmax(y_true, axis=-1), "int32")
        if y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
    return ops.cast(y_true, "int32")


@keras.saving.register_keras_serializable(package="tfimb")
class GroupAccuracy(keras.metrics.Metric):
    """Accuracy over the examples whose true label is one of `classes`.

    `result = sum_i s_i [y_i in G] [argmax(y_pred_i) = y_i] / sum_i s_i [y_i in G]` accumulated
    across batches (s = sample_weight, 1 when absent); 0 until a group example has been seen.
    Labels may be sparse class ids or one-hot; `y_pred` are scores (logits or probabilities).

    Args:
        classes: the class ids of the group (distinct, non-negative integers).
        name: metric name (default "group_accuracy").
        dtype: dtype of the metric's state.

    Example:

    >>> m = tfimb.metrics.GroupAccuracy([1, 2], name="minority_accuracy")
    >>> m.update_state([0, 1, 2, 2], [[.9, .1, 0], [.2, .8, 0], [.6, .3, .1], [0, .1, .9]])
    >>> round(float(m.result()), 4)
    0.6667
    """

    def __init__(self, classes: ClassIds, name: str = "group_accuracy",
                 dtype: str | None = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.classes = _checks.check_classes("classes", classes)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true: TensorLike, y_pred: TensorLike,
                     sample_weight: TensorLike | None = None) -> None:
        y_pred = ops.convert_to_tensor(y_pred)
        width = y_pred.shape[-1]
        if width is not None and self.classes[-1] >= width:
            raise ValueError(
                f"Invalid value for argument `classes` of metric {self.name!r}. Expected class "
                f"ids below the number of classes in `y_pred` ({width}). Received: "
                f"classes={self.classes}"
            )
        true_class = _true_class(y_true, y_pred)
        pred_class = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        group = ops.convert_to_tensor(self.classes, dtype="int32")
        in_group = ops.any(ops.equal(ops.expand_dims(true_class, -1), group), axis=-1)
        weight = ops.cast(in_group, self.dtype)
        if sample_weight is not None:
            sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), self.dtype)
            if len(sample_weight.shape) == len(weight.shape) + 1:
                sample_weight = ops.squeeze(sample_weight, axis=-1)
            weight = weight * ops.broadcast_to(sample_weight, ops.shape(weight))
        correct = ops.cast(ops.equal(true_class, pred_class), self.dtype)
        self.correct.assign_add(ops.sum(weight * correct))
        self.total.assign_add(ops.sum(weight))

    def result(self) -> TensorLike:
        return ops.divide_no_nan(self.correct, self.total)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": list(self.classes)}


def _check_num_classes(num_classes: int) -> int:
    return _checks.check_int("num_classes", num_classes, 2)


def group_accuracies(minority: ClassIds, num_classes: int) -> list[GroupAccuracy]:
    """Minority, majority and all-class accuracy metrics for `model.compile(metrics=...)`.

    Args:
        minority: class ids of the minority group, e.g. `[1, 4, 6]`; the other classes form the
            majority group.
        num_classes: total number of classes C.

    Returns:
        `[GroupAccuracy(minority, name="minority_accuracy"),
          GroupAccuracy(majority, name="majority_accuracy"),
          GroupAccuracy(range(C), name="all_accuracy")]`.
    """
    num_classes = _check_num_classes(num_classes)
    minority = _checks.check_classes("minority", minority, num_classes)
    if len(minority) == num_classes:
        raise _checks.invalid_value(
            "minority", f"a proper subset of the {num_classes} classes (the rest are the "
            "majority)", minority)
    majority = [c for c in range(num_classes) if c not in minority]
    return [
        GroupAccuracy(minority, name="minority_accuracy"),
        GroupAccuracy(majority, name="majority_accuracy"),
        GroupAccuracy(list(range(num_classes)), name="all_accuracy"),
    ]


def shot_groups(counts: ArrayLike, many_above: float = 100,
                few_below: float = 20) -> dict[str, list[int]]:
    """Split classes by training count: many (> 100), medium (20-100), few (< 20).

    Returns a dict `{"many": [...], "medium": [...], "few": [...]}` of class ids.
    """
    counts = _checks.check_counts(counts)
    return {
        "many": np.flatnonzero(counts > many_above).tolist(),
        "medium": np.flatnonzero((counts >= few_below) & (counts <= many_above)).tolist(),
        "few": np.flatnonzero(counts < few_below).tolist(),
    }


def shot_accuracies(counts: ArrayLike, many_above: float = 100,
                    few_below: float = 20) -> list[GroupAccuracy]:
    """Many-, medium- and few-shot accuracy metrics from the training counts.

    Groups follow the long-tail convention: many-shot classes have more than 100 training
    images, medium-shot 20 to 100, few-shot fewer than 20. Metrics are named
    `many_shot_accuracy`, `medium_shot_accuracy`, `few_shot_accuracy`; a group with no class
    (CIFAR-10-LT at imbalance 100 has no few-shot class) gets no metric rather than a
    meaningless 0.

    Args:
        counts: training examples per class (1-D, all > 0).
        many_above, few_below: the group boundaries (defaults 100 and 20).
    """
    groups = shot_groups(counts, many_above, few_below)
    return [GroupAccuracy(classes, name=f"{group}_shot_accuracy")
            for group, classes in groups.items() if classes]


def _class_ids(values: ArrayLike, num_classes: int, arg: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim >= 2 and values.shape[-1] == num_classes:
        return values.reshape(-1, num_classes).argmax(axis=-1)
    flat = values.reshape(-1)
    if flat.size and (not np.all(flat == np.round(flat)) or flat.min() < 0
                      or flat.max() >= num_classes):
        raise _checks.invalid_value(
            arg, f"class ids in [0, {num_classes}) or scores of shape (N, {num_classes})",
            f"array of shape {values.shape}")
    return flat.astype(np.int64)


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Confusion matrix `M[i, j]` = examples of true class i predicted as class j (NumPy).

    Args:
        y_true: sparse class ids `(N,)` or one-hot labels `(N, C)`.
        y_pred: predicted class ids `(N,)` or scores `(N, C)` (argmax is taken).
        num_classes: C.

    Returns:
        int64 array of shape `(C, C)`.
    """
    num_classes = _check_num_classes(num_classes)
    true = _class_ids(y_true, num_classes, "y_true")
    pred = _class_ids(y_pred, num_classes, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(
            "Invalid shape for arguments `y_true` and `y_pred`. Expected the same number of "
            f"examples. Received: {true.size} labels in y_true and {pred.size} in y_pred"
        )
    return np.bincount(true * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def per_class_accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Accuracy of each class (recall), NaN for a class with no evaluation example (NumPy)."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


# ---------------------------------------------------------------------------------------------
# Calibration of the top label.
#
# Confidence bins: `bins` equal-width bins over [0, 1], bin b holding b/B <= c < (b+1)/B and the
# last bin also c = 1. The interior edges are compared in the confidence's own dtype (float32
# for the Keras metric and for float32 probabilities), so that a confidence exactly on an edge
# lands in the same bin in NumPy and in the metric.


def _edges(bins: int) -> np.ndarray:
    """The B - 1 interior bin edges b / B, b = 1 .. B - 1 (float64)."""
    return np.arange(1, bins) / bins


def _scores(y_true: ArrayLike, y_pred: ArrayLike, arg: str) -> tuple[np.ndarray, np.ndarray]:
    """(class ids (N,), scores (N, C)) after checking shapes and finiteness."""
    scores = np.asarray(y_pred)
    if scores.ndim != 2 or scores.shape[0] == 0 or not np.issubdtype(scores.dtype, np.number):
        raise _checks.invalid_value(arg, "scores of shape (N, C) with N >= 1",
                                    f"array of shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise _checks.invalid_value(arg, "finite scores", f"array with {bad} non-finite values")
    labels = _class_ids(y_true, scores.shape[1], "y_true")
    if labels.size != scores.shape[0]:
        raise ValueError(
            f"Invalid shape for arguments `y_true` and `{arg}`. Expected the same number of "
            f"examples. Received: {labels.size} labels in y_true and {scores.shape[0]} in {arg}")
    return labels, scores


def _calibration_sums(y_true: ArrayLike, y_pred: ArrayLike, bins: int,
                      from_logits: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: examples, sum of confidences, correct predictions (float64 sums)."""
    bins = _checks.check_int("bins", bins, 1)
    from_logits = _checks.check_bool("from_logits", from_logits)
    labels, scores = _scores(y_true, y_pred, "y_pred")
    if from_logits:  # max softmax = 1 / sum_j exp(z_j - max z): no overflow, no log needed.
        z = scores.astype(np.float64)
        confidence = 1.0 / np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1)
    else:
        if not np.all((scores >= 0) & (scores <= 1)):
            raise _checks.invalid_value("y_pred", "probabilities in [0, 1] (or from_logits="
                                        "True for logits)", f"values in [{scores.min()}, "
                                        f"{scores.max()}]")
        confidence = scores.max(axis=-1)
        if not np.issubdtype(confidence.dtype, np.floating):
            confidence = confidence.astype(np.float64)
    correct = scores.argmax(axis=-1) == labels
    index = np.searchsorted(_edges(bins).astype(confidence.dtype), confidence, side="right")
    return (np.bincount(index, minlength=bins).astype(np.float64),
            np.bincount(index, confidence.astype(np.float64), minlength=bins),
            np.bincount(index, correct.astype(np.float64), minlength=bins))


def reliability(y_true: ArrayLike, y_pred: ArrayLike, bins: int = 15,
                from_logits: bool = True) -> dict[str, np.ndarray]:
    """The reliability diagram of the top label: per confidence bin, its examples, their mean
    confidence and their accuracy (NumPy).

    The top label is `argmax(y_pred)` and its confidence `max softmax(y_pred)` (logits) or
    `max y_pred` (probabilities, `from_logits=False`: per-class one-vs-all sigmoids too). Bins
    are `bins` equal-width intervals `[b/B, (b+1)/B)` of [0, 1], the last one closed (a
    confidence of 1 lands in it, 0 in the first). A calibrated model's accuracy equals its
    mean confidence in every bin (the diagram's diagonal).

    Args:
        y_true: sparse class ids `(N,)` or one-hot labels `(N, C)`.
        y_pred: logits (default) or probabilities, `(N, C)`.
        bins: number of bins B (default 15, Guo et al. 2017).
        from_logits: whether `y_pred` are logits.

    Returns:
        `{"count": (B,) int64, "confidence": (B,) float64, "accuracy": (B,) float64}`, NaN
        confidence and accuracy for an empty bin.
    """
    count, confidence, correct = _calibration_sums(y_true, y_pred, bins, from_logits)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count.astype(np.int64), "confidence": confidence / count,
                "accuracy": correct / count}


def expected_calibration_error(y_true: ArrayLike, y_pred: ArrayLike, bins: int = 15,
                               from_logits: bool = True) -> float:
    """Expected calibration error of the top label (NumPy; Guo et al., ICML 2017).

    `ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - sum_{i in b} c_i| / N` over
    the confidence bins of `reliability` (same arguments): the gap between accuracy and
    confidence, weighted by where the predictions fall. 0 for a calibrated model; an
    over-confident network (accuracy below its confidence) has a large one even at high
    accuracy, which accuracy alone does not show.

    >>> tfimb.metrics.expected_calibration_error([0, 1], [[.75, .25], [.75, .25]],
    ...                                          from_logits=False)
    0.25
    """
    count, confidence, correct = _calibration_sums(y_true, y_pred, bins, from_logits)
    return float(np.abs(correct - confidence).sum() / count.sum())


def negative_log_likelihood(y_true: ArrayLike, logits: ArrayLike) -> float:
    """Mean negative log-likelihood of the true class, `mean_i -log softmax(z_i)_{y_i}` (NumPy).

    Computed from the logits as `logsumexp(z) - z_y` in float64, so it stays finite where
    `softmax` underflows to 0 (a confidently wrong prediction); a proper score, which unlike
    accuracy rewards calibrated confidence. Labels are class ids `(N,)` or one-hot `(N, C)`.
    """
    labels, z = _scores(y_true, logits, "logits")
    z = z.astype(np.float64)
    top = z.max(axis=-1)
    log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=-1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


@keras.saving.register_keras_serializable(package="tfimb")
class ExpectedCalibrationError(keras.metrics.Metric):
    """Expected calibration error of the top label, accumulated across batches.

    `ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - conf_sum_b| / N`, with the
    top label `argmax(y_pred)`, its confidence `max softmax(y_pred)` (or `max y_pred` when
    `from_logits=False`) and `bins` equal-width confidence bins `[b/B, (b+1)/B)` of [0, 1] (a
    confidence of 1 in the last). The state is per bin: the (weighted) examples, confidence
    sum and correct predictions, so that the result over many batches is the ECE of all of
    them (a mean of per-batch ECEs would not be). Equals
    `tfimb.metrics.expected_calibration_error`; `sample_weight` weights the examples.

    Args:
        bins: number of bins B (an integer >= 1; default 15).
        from_logits: whether `y_pred` are logits (default) or probabilities.
        name: metric name (default "ece").
        dtype: dtype of the metric's state.

    Example:

    >>> m = tfimb.metrics.ExpectedCalibrationError(bins=10, from_logits=False)
    >>> m.update_state([0, 1, 1, 0], [[.95, .05], [.15, .85], [.65, .35], [.25, .75]])
    >>> round(float(m.result()), 4)
    0.4
    """

    def __init__(self, bins: int = 15, from_logits: bool = True, name: str = "ece",
                 dtype: str | None = None) -> None:
        super().__init__(name=name, dtype=dtype)
        self.bins = _checks.check_int("bins", bins, 1)
        self.from_logits = _checks.check_bool("from_logits", from_logits)
        self.count = self.add_variable(shape=(self.bins,), initializer="zeros", name="count")
        self.confidence = self.add_variable(shape=(self.bins,), initializer="zeros",
                                            name="confidence")
        self.correct = self.add_variable(shape=(self.bins,), initializer="zeros",
                                         name="correct")

    def update_state(self, y_true: TensorLike, y_pred: TensorLike,
                     sample_weight: TensorLike | None = None) -> None:
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        true_class = _true_class(y_true, y_pred)
        if self.from_logits:
            shifted = y_pred - ops.max(y_pred, axis=-1, keepdims=True)
            confidence = 1.0 / ops.sum(ops.exp(shifted), axis=-1)
        else:
            confidence = ops.max(y_pred, axis=-1)
        correct = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"),
                                     true_class), self.dtype)
        edges = ops.convert_to_tensor(_edges(self.bins), dtype=self.dtype)
        index = ops.sum(ops.cast(ops.expand_dims(confidence, -1) >= edges, "int32"), axis=-1)
        weight = ops.one_hot(index, self.bins, dtype=self.dtype)  # (..., bins)
        if sample_weight is not None:
            sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), self.dtype)
            if len(sample_weight.shape) == len(confidence.shape) + 1:
                sample_weight = ops.squeeze(sample_weight, axis=-1)
            sample_weight = ops.broadcast_to(sample_weight, ops.shape(confidence))
            weight = weight * ops.expand_dims(sample_weight, -1)
        weight = ops.reshape(weight, (-1, self.bins))
        self.count.assign_add(ops.sum(weight, axis=0))
        self.confidence.assign_add(ops.sum(weight * ops.reshape(confidence, (-1, 1)), axis=0))
        self.correct.assign_add(ops.sum(weight * ops.reshape(correct, (-1, 1)), axis=0))

    def result(self) -> TensorLike:
        return ops.divide_no_nan(ops.sum(ops.abs(self.correct - self.confidence)),
                                 ops.sum(self.count))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bins": self.bins, "from_logits": self.from_logits}
