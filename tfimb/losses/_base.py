"""The bases of the tfimb loss classes: arguments, `get_config` and the weighted-mean reduction.

`_ImbalanceLoss` holds the arguments every loss takes and computes through `tfimb.losses._core`;
its `_activation` ("softmax" or "sigmoid") picks the family. `_WeightedLoss` adds per-class
weights and `normalization`. The focal and class-balanced bases own `gamma` and `beta`, their
checks and their config entries, for the softmax losses and their one-vs-all sigmoid twins
alike, which differ only in `_activation`, their default name and their docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import keras
from keras import ops

from tfimb import _checks
from tfimb import weights as _weights
from tfimb._checks import ArrayLike, Normalization, TensorLike
from tfimb.losses._core import _compute_dtype, _imbalance_loss, _per_example, _replicas_in_sync


class _ImbalanceLoss(keras.losses.Loss):
    """Base: common arguments, float32-or-wider computation, config round trip."""

    #: "softmax" (one softmax over the classes) or "sigmoid" (one-vs-all sigmoids, summed).
    _activation: str = "softmax"

    def __init__(self, *, from_logits: bool, label_smoothing: float, reduction: str | None,
                 name: str, dtype: str | None) -> None:
        self._dtype_arg = dtype
        super().__init__(name=name, reduction=reduction, dtype=_compute_dtype(dtype))
        self.from_logits = bool(from_logits)
        self.label_smoothing = _checks.check_label_smoothing(label_smoothing)

    def _loss_kwargs(self) -> dict[str, Any]:
        """Pre-computed keyword arguments of `_imbalance_loss` specific to the subclass."""
        return {}

    def call(self, y_true: TensorLike, y_pred: TensorLike) -> TensorLike:
        return _imbalance_loss(
            y_true, y_pred, from_logits=self.from_logits,
            label_smoothing=self.label_smoothing, dtype=self.dtype, activation=self._activation,
            **self._loss_kwargs())

    def __call__(self, y_true: TensorLike, y_pred: TensorLike,
                 sample_weight: TensorLike | None = None) -> TensorLike:
        kwargs = self._loss_kwargs()
        if kwargs.get("class_weights") is None or kwargs.get("normalization") != "weighted_mean":
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        # Weighted mean: each example weighs s_i * w_{y_i} (sample weight and mask times class
        # weight) and the mean divides by the total weight.
        mask = getattr(y_pred, "_keras_mask", None)
        with keras.name_scope(self.name):
            kwargs.pop("normalization")
            losses, weights = _per_example(
                ops.convert_to_tensor(y_true, self.dtype),
                ops.convert_to_tensor(y_pred, self.dtype), from_logits=self.from_logits,
                label_smoothing=self.label_smoothing, dtype=self.dtype,
                activation=self._activation, **kwargs)
            if sample_weight is not None:
                sample_weight = ops.convert_to_tensor(sample_weight, self.dtype)
                if len(sample_weight.shape) == len(losses.shape) + 1:
                    sample_weight = ops.squeeze(sample_weight, axis=-1)
                weights = weights * ops.broadcast_to(sample_weight, ops.shape(losses))
            if mask is not None:
                weights = weights * ops.cast(mask, self.dtype)
            weighted = losses * weights
            if self.reduction in (None, "none"):  # Values whose mean is the weighted mean.
                return ops.divide_no_nan(weighted, ops.mean(weights))
            if self.reduction == "sum":
                return ops.divide_no_nan(ops.sum(weighted), ops.mean(weights))
            mean = ops.divide_no_nan(ops.sum(weighted), ops.sum(weights))
            replicas = _replicas_in_sync()
            return mean / replicas if replicas > 1 else mean

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing,
                      dtype=self._dtype_arg)
        return config


def _counts_config(counts: np.ndarray) -> list[int | float]:
    """Counts as plain Python numbers for JSON configs (ints stay ints)."""
    return [int(c) if float(c).is_integer() else float(c) for c in counts]


class _WeightedLoss(_ImbalanceLoss):
    """Base for losses that weight each example by its true class."""

    def __init__(self, counts: ArrayLike, class_weights: ArrayLike, normalization: Normalization,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts = _counts_config(_checks.check_counts(counts))
        self.normalization = _checks.check_normalization(normalization)
        self.class_weights = np.asarray(class_weights, np.float64)

    def _loss_kwargs(self) -> dict[str, Any]:
        return dict(class_weights=self.class_weights.astype(self.dtype),
                    normalization=self.normalization, num_classes=len(self.counts))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(counts=self.counts, normalization=self.normalization)
        return config


class _FocalLoss(_ImbalanceLoss):
    """Base of the unweighted focal losses: the focusing parameter `gamma`."""

    def __init__(self, gamma: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gamma = _checks.check_gamma(gamma)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {**super()._loss_kwargs(), "gamma": self.gamma}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}


class _ClassBalancedLoss(_WeightedLoss):
    """Base of the class-balanced losses: weights `(1 - beta) / (1 - beta^{n_c})` from `beta`."""

    def __init__(self, beta: float, counts: ArrayLike, normalization: Normalization,
                 **kwargs: Any) -> None:
        super().__init__(counts, _weights.class_balanced_weights(counts, beta), normalization,
                         **kwargs)
        self.beta = float(beta)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}


class _ClassBalancedFocalLoss(_ClassBalancedLoss):
    """Base of the class-balanced focal losses: class-balanced weights and `gamma`."""

    def __init__(self, beta: float, counts: ArrayLike, gamma: float,
                 normalization: Normalization, **kwargs: Any) -> None:
        super().__init__(beta, counts, normalization, **kwargs)
        self.gamma = _checks.check_gamma(gamma)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {**super()._loss_kwargs(), "gamma": self.gamma}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}


def _values(cls: type[_ImbalanceLoss], y_true: TensorLike, y_pred: TensorLike,
            **kwargs: Any) -> TensorLike:
    """Per-example values of loss class `cls`: the class's own computation, `reduction=None`
    (for weighted losses under "weighted_mean", values whose batch mean is the weighted mean).
    Computes in y_pred's dtype when that is float64, else in float32."""
    dtype = "float64" if "float64" in str(getattr(y_pred, "dtype", "")) else None
    return cls(reduction=None, dtype=dtype, **kwargs)(y_true, y_pred)
