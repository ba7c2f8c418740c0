"""The one-vs-all sigmoid losses (Cui et al.'s "sigmoid" and "focal" loss types).

The twins of `SoftmaxCrossEntropy`, `Focal`, `ClassBalancedSoftmax` and `ClassBalancedFocal`.
Each subclasses its twin's base (`tfimb.losses._base`), which owns the arguments, their checks
and the config, and adds only its default name, its docstring and `_activation = "sigmoid"`,
with which `tfimb.losses._core` sums, over classes, the binary cross-entropies of independent
sigmoids instead of taking a softmax (labels may then be multi-hot). The two class-balanced ones
also take `weighting` (`_ClassWiseWeighting`): Cui et al.'s per-example weight, or per-class
weights on the binary terms for multi-label data. The rules all losses share are in the
`tfimb.losses` docstring.
"""

from __future__ import annotations

from typing import Any, TypeVar

import keras

from tfimb import _checks
from tfimb._checks import ArrayLike, Normalization, Weighting
from tfimb.losses._base import (_ClassBalancedFocalLoss, _ClassBalancedLoss, _FocalLoss,
                                _ImbalanceLoss, _WeightedLoss)

# The paragraph on labels of every sigmoid loss's docstring, written once: it replaces the
# docstring's line "Labels: see _LABELS." (`_with_labels_paragraph`).
_LABELS = """Labels: sparse class ids, one-hot rows, or multi-hot rows (several classes per example,
    values in [0, 1]) for multi-label data. Each example's loss sums, over classes, the binary
    cross-entropy of a one-vs-all sigmoid; no softmax couples the classes. Predict single-label
    data with `argmax(z)`, multi-label data with `sigmoid(z_c) > threshold`. Cui et al. start
    the last layer's bias at `-log(C - 1)` (prior 1/C per class) so that the C - 1 negatives do
    not swamp the first steps; `tfimb train` does the same for the sigmoid losses."""

_Loss = TypeVar("_Loss", bound=type)


# The paragraph on `weighting` of both class-balanced sigmoid losses' docstrings, written once: it
# replaces their line "Weighting: see _WEIGHTING." (`_with_labels_paragraph`).
_WEIGHTING = """Weighting (`weighting`, `tfimb.catalog.WEIGHTINGS`):

    * `"example"` (default; Cui et al.'s rule, the single-label protocol): the example's weight
      `w_y = sum_c y_c w_c`, the sum of its positive classes' weights (the weight of its class
      for sparse and one-hot labels), scales all its C binary terms. A multi-hot row with no
      positive class weighs 0 and drops out of training.
    * `"class"` (multi-label data): each class's binary term is weighted by that class's own
      weight, `l = sum_c w_c BCE_c`, for positives and negatives alike, so an all-negative
      example keeps a nonzero loss. Every example's C terms weigh C in all (the weights sum to
      C), so without sample weights both normalizations give the plain batch mean. Per-class weights
      on the binary terms are the multi-label practice that Wu et al.'s distribution-balanced
      loss starts from (ECCV 2020, https://arxiv.org/abs/2007.09654).

    The default never depends on the labels' values: no rule can tell a one-hot row from a
    multi-hot row with one positive without looking at each batch, and such a rule would weight
    one batch of a run differently from the next. Pass `weighting="class"` for multi-label
    data; `counts` are then the positives per class."""


def _with_labels_paragraph(cls: _Loss) -> _Loss:
    """Class decorator: put `_LABELS` in place of the line "Labels: see _LABELS." of the class's
    docstring, and `_WEIGHTING` in place of the line "Weighting: see _WEIGHTING." where it has
    one."""
    marker = "Labels: see _LABELS."
    if cls.__doc__ is None or cls.__doc__.count(marker) != 1:
        raise TypeError(f"{cls.__name__}'s docstring needs the line {marker!r} once")
    cls.__doc__ = cls.__doc__.replace(marker, _LABELS)
    weighting = "Weighting: see _WEIGHTING."
    if weighting in cls.__doc__:
        cls.__doc__ = cls.__doc__.replace(weighting, _WEIGHTING)
    return cls


class _ClassWiseWeighting(_WeightedLoss):
    """Base of the class-balanced sigmoid losses: the `weighting` argument ("example" or
    "class"), its check and its config entry."""

    weighting: Weighting = "example"

    def _set_weighting(self, weighting: str) -> None:
        self.weighting = _checks.check_weighting(weighting)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {**super()._loss_kwargs(), "weighting": self.weighting}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weighting": self.weighting}


@keras.saving.register_keras_serializable(package="tfimb")
@_with_labels_paragraph
class SigmoidCrossEntropy(_ImbalanceLoss):
    """One-vs-all sigmoid cross-entropy (Cui et al.'s "sigmoid" loss type, unweighted).

    Per example: `l = sum_c BCE(z_c, y_c)`, `BCE(z, y) = softplus(z) - y z`
    (`= -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))`), stable for logits of any size.

    Labels: see _LABELS.

    Args:
        from_logits: whether `y_pred` are logits (default `True`) or per-class probabilities.
        label_smoothing: float in [0, 1); targets become `y (1 - e) + e / 2` (Keras' binary
            rule). The focal modulator then uses Cui et al.'s form with the smoothed target
            q, `exp(-gamma (q z + softplus(-z)))`, which equals `(1 - p_t)^gamma` for hard
            targets only (Keras' `BinaryFocalCrossentropy` interpolates p_t instead).
        reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Example:

    >>> loss = tfimb.SigmoidCrossEntropy(reduction=None)
    >>> [round(float(v), 6) for v in loss([0, 1], [[2.0, -1.0], [0.5, 2.5]])]
    [0.44019, 1.052967]
    """

    _activation = "sigmoid"

    def __init__(self, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size",
                 name: str = "sigmoid_cross_entropy", dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tfimb")
@_with_labels_paragraph
class SigmoidFocal(_FocalLoss):
    """Sigmoid focal loss (Lin et al., ICCV 2017; Cui et al.'s "focal" loss type, unweighted).

    Per example: `l = sum_c (1 - p_t,c)^gamma BCE(z_c, y_c)`, `p_t,c = sigmoid(z_c)` for a
    positive and `1 - sigmoid(z_c)` for a negative. The modulator is computed in log space,
    `exp(-gamma (y_c z_c + softplus(-z_c)))` (Cui et al.'s form, through softplus), so nothing
    is clipped and nothing overflows. `gamma = 0` is `SigmoidCrossEntropy`. No `alpha`: class
    balance comes from `ClassBalancedSigmoidFocal`'s weights instead.

    Labels: see _LABELS.

    Args:
        gamma: focusing parameter, `gamma >= 0` (default 2.0, as Lin et al.).
        from_logits, label_smoothing, reduction, name, dtype: as in `SigmoidCrossEntropy`.

    Reference: Lin, Goyal, Girshick, He, Dollar. "Focal Loss for Dense Object Detection."
    https://arxiv.org/abs/1708.02002

    Example:

    >>> loss = tfimb.SigmoidFocal(gamma=2.0, reduction=None)
    >>> [round(float(v), 6) for v in loss([0, 1], [[2.0, -1.0], [0.5, 2.5]])]
    [0.024462, 0.377866]
    """

    _activation = "sigmoid"

    def __init__(self, gamma: float = 2.0, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str = "sigmoid_focal",
                 dtype: str | None = None) -> None:
        super().__init__(gamma, from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tfimb")
@_with_labels_paragraph
class ClassBalancedSigmoid(_ClassWiseWeighting, _ClassBalancedLoss):
    """Class-balanced sigmoid cross-entropy (Cui et al., CVPR 2019, loss type "sigmoid").

    Per example: `l = w_y sum_c BCE(z_c, y_c)`, `w_c = (1 - beta) / (1 - beta^{n_c})` (float64,
    rescaled to sum to C): the weight of the example's class scales all C binary terms, as in
    the authors' code. For multi-hot labels the example's weight is the sum of its positive
    classes' weights (an example with no positive class then weighs 0) unless
    `weighting="class"`, which gives `l = sum_c w_c BCE(z_c, y_c)`; `counts` are then the
    positives per class (`tfimb.class_counts(labels, C, multi_label=True)`).
    `normalization="num_classes"` (plain batch mean) is the authors' reduction; the default
    `"weighted_mean"` divides by the batch's total weight instead (module docstring).

    Labels: see _LABELS.

    Weighting: see _WEIGHTING.

    Args:
        beta: `0 <= beta < 1`.
        counts: training examples (positives) per class over the whole training set.
        normalization: `"weighted_mean"` (default) or `"num_classes"`.
        weighting: `"example"` (default) or `"class"` (multi-label data), as above.
        from_logits, label_smoothing, reduction, name, dtype: as in `SigmoidCrossEntropy`.

    References: Cui, Jia, Lin, Song, Belongie. "Class-Balanced Loss Based on Effective Number
    of Samples." https://arxiv.org/abs/1901.05555. Wu, Huang, Liu, Wang, Lin.
    "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets."
    https://arxiv.org/abs/2007.09654

    Example:

    >>> loss = tfimb.ClassBalancedSigmoid(0.999, [100, 10, 1], normalization="num_classes")
    >>> round(float(loss([0, 1, 2], [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])), 6)
    1.625324

    Multi-label, class-wise (the second row has no positive class and still counts):

    >>> multi_hot = [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    >>> loss = tfimb.ClassBalancedSigmoid(0.999, [100, 10, 1], weighting="class", reduction=None)
    >>> [round(float(v), 6) for v in loss(multi_hot, [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])]
    [2.369985, 3.034251, 0.314566]
    """

    _activation = "sigmoid"

    def __init__(self, beta: float, counts: ArrayLike,
                 normalization: Normalization = "weighted_mean",
                 weighting: Weighting = "example", from_logits: bool = True,
                 label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "class_balanced_sigmoid", dtype: str | None = None) -> None:
        super().__init__(beta, counts, normalization, from_logits=from_logits,
                         label_smoothing=label_smoothing, reduction=reduction, name=name,
                         dtype=dtype)
        self._set_weighting(weighting)


@keras.saving.register_keras_serializable(package="tfimb")
@_with_labels_paragraph
class ClassBalancedSigmoidFocal(_ClassWiseWeighting, _ClassBalancedFocalLoss):
    """Class-balanced sigmoid focal loss (Cui et al., CVPR 2019, loss type "focal").

    Per example: `l = w_y sum_c (1 - p_t,c)^gamma BCE(z_c, y_c)` with the class-balanced weights
    of `ClassBalancedSigmoid` and the modulator of `SigmoidFocal`; with `weighting="class"`,
    `l = sum_c w_c (1 - p_t,c)^gamma BCE(z_c, y_c)`. The authors' best loss on CIFAR-10-LT at
    imbalance 100 (beta = 0.9999, gamma = 1.0, `normalization="num_classes"`: 74.57% top-1,
    their Table 2). `gamma = 0` gives `ClassBalancedSigmoid`, `beta = 0` gives `SigmoidFocal`.

    Labels: see _LABELS.

    Weighting: see _WEIGHTING.

    Args:
        beta: `0 <= beta < 1`.
        counts: training examples (positives) per class over the whole training set.
        gamma: focusing parameter, `gamma >= 0` (default 1.0).
        normalization: `"weighted_mean"` (default) or `"num_classes"`.
        weighting: `"example"` (default) or `"class"` (multi-label data), as above.
        from_logits, label_smoothing, reduction, name, dtype: as in `SigmoidCrossEntropy`.

    References: Cui et al. https://arxiv.org/abs/1901.05555; for `weighting="class"`, Wu et
    al. https://arxiv.org/abs/2007.09654

    Example:

    >>> loss = tfimb.ClassBalancedSigmoidFocal(0.9999, [5000, 500, 50], gamma=1.0,
    ...                                        normalization="num_classes")
    >>> round(float(loss([0, 1, 2], [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])), 6)
    0.862883
    """

    _activation = "sigmoid"

    def __init__(self, beta: float, counts: ArrayLike, gamma: float = 1.0,
                 normalization: Normalization = "weighted_mean",
                 weighting: Weighting = "example", from_logits: bool = True,
                 label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "class_balanced_sigmoid_focal", dtype: str | None = None) -> None:
        super().__init__(beta, counts, gamma, normalization, from_logits=from_logits,
                         label_smoothing=label_smoothing, reduction=reduction, name=name,
                         dtype=dtype)
        self._set_weighting(weighting)
