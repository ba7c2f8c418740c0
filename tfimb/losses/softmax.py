"""The softmax losses: cross-entropy, focal, class-weighted and logit-adjusted.

Each takes sparse class ids or one-hot / soft label rows and computes `p = softmax(z)` in log
space (`tfimb.losses._core`). Their sigmoid twins are in `tfimb.losses.sigmoid`, LDAM in
`tfimb.losses.margin`; the rules all losses share are in the `tfimb.losses` docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import keras

from tfimb import _checks
from tfimb import weights as _weights
from tfimb._checks import ArrayLike, Normalization
from tfimb.losses._base import (_ClassBalancedFocalLoss, _ClassBalancedLoss, _counts_config,
                                _FocalLoss, _ImbalanceLoss, _WeightedLoss)


@keras.saving.register_keras_serializable(package="tfimb")
class SoftmaxCrossEntropy(_ImbalanceLoss):
    """Softmax cross-entropy for sparse or one-hot labels.

    Per example: `l = -log p_y`, `p = softmax(z)`, averaged over the batch. The unweighted
    baseline of the imbalance experiments; unlike Keras' two cross-entropies, one class takes
    both label forms.

    Args:
        from_logits: whether `y_pred` are logits (default `True`) or probabilities.
        label_smoothing: float in [0, 1); targets become `(1 - e) * onehot + e / C`.
        reduction: Keras reduction (default `"sum_over_batch_size"`).
        name: loss name.
        dtype: computation dtype; 16-bit floats are promoted to float32.

    Example:

    >>> loss = tfimb.SoftmaxCrossEntropy()
    >>> round(float(loss([0, 1], [[2.0, 1.0], [0.5, 2.5]])), 6)
    0.220095
    """

    def __init__(self, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size",
                 name: str = "softmax_cross_entropy", dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tfimb")
class InverseClassFrequency(_WeightedLoss):
    """Cross-entropy weighted by inverse class frequency.

    Per example: `l = -w_y log p_y` with `w_c = 1 / n_c` (the `beta -> 1` limit of
    `ClassBalancedSoftmax`). Batch reduction set by `normalization` (see the module docstring):
    `"weighted_mean"` (default) `sum_i w_{y_i} l_i / sum_i w_{y_i}`, or `"num_classes"`.

    Args:
        counts: training examples per class over the whole training set (1-D, all > 0).
        normalization: `"weighted_mean"` (default) or `"num_classes"`.
        from_logits: whether `y_pred` are logits (default `True`) or probabilities.
        label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Example:

    >>> loss = tfimb.InverseClassFrequency(counts=[1000, 10])
    >>> round(float(loss([0, 1], [[2.0, 1.0], [0.5, 2.5]])), 6)
    0.128773
    """

    def __init__(self, counts: ArrayLike, normalization: Normalization = "weighted_mean",
                 from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size",
                 name: str = "inverse_class_frequency", dtype: str | None = None) -> None:
        super().__init__(
            counts, _weights.inverse_frequency_weights(counts), normalization,
            from_logits=from_logits, label_smoothing=label_smoothing, reduction=reduction,
            name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tfimb")
class Focal(_FocalLoss):
    """Softmax focal loss (Lin et al., ICCV 2017), sparse or one-hot labels.

    Per example: `l = -(1 - p_y)^gamma log p_y`; with soft or smoothed targets q,
    `l = -sum_c q_c (1 - p_c)^gamma log p_c` (Keras' definition). `gamma = 0` is cross-entropy.
    Unlike `keras.losses.CategoricalFocalCrossentropy` it takes sparse labels, works from logits
    in log space and never clips, so gradients stay finite when p underflows or p -> 1, also for
    `gamma < 1`.

    Args:
        gamma: focusing parameter, `gamma >= 0` (default 2.0, as Lin et al. and Keras).
        from_logits, label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Reference: Lin, Goyal, Girshick, He, Dollar. "Focal Loss for Dense Object Detection."
    https://arxiv.org/abs/1708.02002

    Example:

    >>> loss = tfimb.Focal(gamma=2.0, from_logits=False, reduction=None)
    >>> [round(float(v), 5) for v in loss([0, 1, 2], [[.8, .1, .1], [.2, .7, .1], [.2, .2, .6]])]
    [0.00893, 0.0321, 0.08173]
    """

    def __init__(self, gamma: float = 2.0, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str = "focal",
                 dtype: str | None = None) -> None:
        super().__init__(gamma, from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tfimb")
class ClassBalancedSoftmax(_ClassBalancedLoss):
    """Class-balanced softmax cross-entropy (Cui et al., CVPR 2019).

    Per example: `l = -w_y log p_y` with `w_c = 1 / E_{n_c} = (1 - beta) / (1 - beta^{n_c})`,
    the inverse effective number of samples. `beta = 0` gives cross-entropy, `beta -> 1` inverse
    class frequency. Weights are computed in float64 and rescaled to sum to C. Batch reduction
    set by `normalization` (module docstring): `"weighted_mean"` (default) is the imbalanced
    CIFAR-10 protocol's reduction, `"num_classes"` that of the authors' CIFAR-10-LT code.

    Args:
        beta: `0 <= beta < 1`; searched over {0.9, 0.99, 0.999, 0.9999} in the paper.
        counts: training examples per class over the whole training set (1-D, all > 0).
        normalization: `"weighted_mean"` (default) or `"num_classes"`.
        from_logits, label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Reference: Cui, Jia, Lin, Song, Belongie. "Class-Balanced Loss Based on Effective Number
    of Samples." https://arxiv.org/abs/1901.05555

    Example:

    >>> loss = tfimb.ClassBalancedSoftmax(0.999, counts=[100, 10, 1])
    >>> logits = [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]]
    >>> round(float(loss([0, 1, 2], logits)), 6)
    0.122495
    """

    def __init__(self, beta: float, counts: ArrayLike,
                 normalization: Normalization = "weighted_mean", from_logits: bool = True,
                 label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "class_balanced_softmax", dtype: str | None = None) -> None:
        super().__init__(beta, counts, normalization, from_logits=from_logits,
                         label_smoothing=label_smoothing, reduction=reduction, name=name,
                         dtype=dtype)


@keras.saving.register_keras_serializable(package="tfimb")
class ClassBalancedFocal(_ClassBalancedFocalLoss):
    """Class-balanced softmax focal loss (Cui et al., CVPR 2019).

    Per example: `l = -w_y (1 - p_y)^gamma log p_y`, `w_c = (1 - beta) / (1 - beta^{n_c})`
    (float64, rescaled to sum to C); the modulator is computed in log space (see `Focal`).
    `gamma = 0` gives `ClassBalancedSoftmax`; `beta = 0` gives `Focal`. Under
    `normalization="num_classes"` it equals
    `keras.losses.CategoricalFocalCrossentropy(alpha=weights, gamma=gamma)` on one-hot labels,
    without that loss's clipping at 1e-7.

    Args:
        beta: `0 <= beta < 1`.
        counts: training examples per class over the whole training set (1-D, all > 0).
        gamma: focusing parameter, `gamma >= 0` (default 1.0, as in the imbalance protocol).
        normalization: `"weighted_mean"` (default) or `"num_classes"`.
        from_logits, label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Reference: Cui et al. https://arxiv.org/abs/1901.05555

    Example:

    >>> loss = tfimb.ClassBalancedFocal(0.999, [100, 10, 1], gamma=2.0)
    >>> round(float(loss([0, 1, 2], [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])), 6)
    0.002298
    """

    def __init__(self, beta: float, counts: ArrayLike, gamma: float = 1.0,
                 normalization: Normalization = "weighted_mean", from_logits: bool = True,
                 label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "class_balanced_focal", dtype: str | None = None) -> None:
        super().__init__(beta, counts, gamma, normalization, from_logits=from_logits,
                         label_smoothing=label_smoothing, reduction=reduction, name=name,
                         dtype=dtype)


@keras.saving.register_keras_serializable(package="tfimb")
class BalancedSoftmax(_ImbalanceLoss):
    """Balanced softmax (Ren et al., NeurIPS 2020): cross-entropy on `z + log n`.

    Per example: `l = -log softmax(z + log n)_y`. The log counts are added only inside the loss,
    so the model's own logits `z` estimate the balanced (uniform-prior) posterior: predict with
    `argmax(z)`. Equals `LogitAdjusted(counts, tau=1)`.

    Args:
        counts: training examples per class over the whole training set (1-D, all > 0).
        from_logits, label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Reference: Ren et al. "Balanced Meta-Softmax for Long-Tailed Visual Recognition."
    https://arxiv.org/abs/2007.10740

    Example:

    >>> loss = tfimb.BalancedSoftmax([100, 10, 1])
    >>> round(float(loss([0, 1, 2], [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])), 6)
    0.953223
    """

    def __init__(self, counts: ArrayLike, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str = "balanced_softmax",
                 dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)
        counts = _checks.check_counts(counts)
        self.counts = _counts_config(counts)
        self._offset = np.log(counts)

    def _loss_kwargs(self) -> dict[str, Any]:
        return dict(logit_offset=self._offset.astype(self.dtype), num_classes=len(self.counts))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "counts": self.counts}


@keras.saving.register_keras_serializable(package="tfimb")
class LogitAdjusted(_ImbalanceLoss):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021).

    Per example: `l = -log softmax(z + tau * log pi)_y`, `pi_c = n_c / sum_k n_k` (class
    priors). `tau = 1` equals `BalancedSoftmax`; `tau = 0` is cross-entropy. Predict with
    `argmax(z)`. (The post-hoc variant trains with cross-entropy and predicts with
    `argmax(z - tau * log pi)`.)

    Args:
        counts: training examples per class over the whole training set (1-D, all > 0).
        tau: temperature of the adjustment, `tau >= 0` (default 1.0).
        from_logits, label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Reference: Menon et al. "Long-tail learning via logit adjustment."
    https://arxiv.org/abs/2007.07314

    Example:

    >>> loss = tfimb.LogitAdjusted([100, 10, 1], tau=1.0, reduction=None)
    >>> [round(float(v), 6) for v in loss([0, 1, 2], [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])]
    [0.037569, 0.860538, 1.961562]
    """

    def __init__(self, counts: ArrayLike, tau: float = 1.0, from_logits: bool = True,
                 label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "logit_adjusted", dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)
        counts = _checks.check_counts(counts)
        self.counts = _counts_config(counts)
        self.tau = _checks.check_range("tau", tau, 0.0)
        self._offset = self.tau * np.log(counts / counts.sum())

    def _loss_kwargs(self) -> dict[str, Any]:
        return dict(logit_offset=self._offset.astype(self.dtype), num_classes=len(self.counts))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "counts": self.counts, "tau": self.tau}
