"""Class-imbalance losses for Keras 3 (any backend: only `keras` and `keras.ops` are used).

Every loss is a `keras.losses.Loss` subclass, registered for `.keras` serialization under the
package "tfimb", paired with a function of the same name in snake case that returns the
per-example values (the class's loss is their mean under the default reduction).

Common behaviour:

* `from_logits=True` by default: `y_pred` are logits. With `from_logits=False`, `y_pred` are
  probabilities; they are turned into log-probabilities (clipped at the smallest normal float,
  not at 1e-7) and renormalised, so prefer logits.
* Labels may be sparse class ids (`(batch,)` or `(batch, 1)`) or one-hot / soft labels
  (`(batch, C)`). `label_smoothing=e` trains against `(1 - e) * onehot + e / C`; class weights,
  margins and group membership always use the unsmoothed label.
* Computation runs in float32 at least: under `mixed_bfloat16` / `mixed_float16` the logits are
  cast up before the softmax.
* Numerics: log-probabilities come from a log-softmax, and the focal modulator
  `(1 - p_y)^gamma = exp(gamma * log(1 - p_y))` is computed in log space with
  `log(1 - p_y) = logsumexp_{j != y} z_j - logsumexp_j z_j` for the largest logit and
  `log1p(-p)` for the others (which have p <= 1/2). Nothing is clipped, so gradients stay finite
  for gamma in [0, 5] (gamma < 1 included), logits up to +-1e4 and probabilities that underflow.
* Class counts must come from the whole training set (`tfimb.class_counts`), never from a batch.
* Labels outside [0, C): a ValueError in eager mode; inside a compiled graph, where labels
  cannot be inspected without a backend-specific op, the example's loss becomes NaN (never a
  silent zero), which `keras.callbacks.TerminateOnNaN` stops on.

Weighted losses (`InverseClassFrequency`, `ClassBalancedSoftmax`, `ClassBalancedFocal`,
`ClassBalancedSigmoid`, `ClassBalancedSigmoidFocal`) take `normalization`:

* `"weighted_mean"` (default): batch loss `sum_i w_{y_i} l_i / sum_i w_{y_i}`, the weighted mean
  used in the published imbalanced CIFAR-10 experiment (minority classes automobile, deer, frog
  cut to 250 images). The loss keeps the scale
  of plain cross-entropy whatever beta is. A `sample_weight` s and a Keras mask m multiply each
  example's weight: `sum_i s_i m_i w_{y_i} l_i / sum_i s_i m_i w_{y_i}`, whatever the mean
  reduction (`"sum_over_batch_size"`, `"mean"`, `"mean_with_sample_weight"`).
  `reduction=None` returns values whose batch mean is the weighted mean
  (`s_i w_{y_i} l_i / mean_batch(s w)`), as do the loss functions. Under `tf.distribute` each
  replica takes the weighted mean of its own share of the batch and the replicas' means are
  averaged (a cross-replica sum of the weights inside the loss deadlocks TF 2.21's collectives
  with the gradient all-reduce); `"num_classes"` gives exactly the single-device step.
* `"num_classes"`: weights rescaled to sum to C and a plain batch mean of `w_{y_i} l_i`, as the
  class-balanced authors' code did for their CIFAR-10-LT table (CVPR 2019; the protocol is
  `configs/cifar10_lt/`).
  With beta = 0.9999 on CIFAR-10-LT the average weight per training example is about 0.17, so
  gradients are about 6x smaller than cross-entropy's: adjust the learning rate accordingly.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import keras

from tfimb import _checks, catalog
from tfimb._checks import ArrayLike, Normalization, TensorLike, Weighting
from tfimb.losses._base import _ImbalanceLoss, _values, _WeightedLoss
from tfimb.losses.margin import LDAM
from tfimb.losses.sigmoid import (ClassBalancedSigmoid, ClassBalancedSigmoidFocal,
                                  SigmoidCrossEntropy, SigmoidFocal)
from tfimb.losses.softmax import (BalancedSoftmax, ClassBalancedFocal, ClassBalancedSoftmax,
                                  Focal, InverseClassFrequency, LogitAdjusted,
                                  SoftmaxCrossEntropy)

__all__ = [
    "SoftmaxCrossEntropy", "InverseClassFrequency", "Focal", "ClassBalancedSoftmax",
    "ClassBalancedFocal", "BalancedSoftmax", "LogitAdjusted", "LDAM", "SigmoidCrossEntropy",
    "SigmoidFocal", "ClassBalancedSigmoid", "ClassBalancedSigmoidFocal",
    "softmax_cross_entropy", "inverse_class_frequency", "focal", "class_balanced_softmax",
    "class_balanced_focal", "balanced_softmax", "logit_adjusted", "ldam",
    "sigmoid_cross_entropy", "sigmoid_focal", "class_balanced_sigmoid",
    "class_balanced_sigmoid_focal", "LOSSES", "get",
]


# ---------------------------------------------------------------------------------------------
# Loss functions: per-example values (their mean is the batch loss), computed by the class.


_F = TypeVar("_F", bound=Callable[..., Any])


def _serializable(function: _F) -> _F:
    """Register a loss function for `.keras` files under "tfimb", keeping its signature for type
    checkers (Keras' own decorator is untyped, so it would hide it)."""
    return keras.saving.register_keras_serializable(package="tfimb")(function)


@_serializable
def softmax_cross_entropy(y_true: TensorLike, y_pred: TensorLike, from_logits: bool = True,
                          label_smoothing: float = 0.0) -> TensorLike:
    """Softmax cross-entropy `-log p_y`, sparse or one-hot labels. See `SoftmaxCrossEntropy`."""
    return _values(SoftmaxCrossEntropy, y_true, y_pred,
                   from_logits=from_logits, label_smoothing=label_smoothing)


@_serializable
def inverse_class_frequency(y_true: TensorLike, y_pred: TensorLike, counts: ArrayLike,
                            normalization: Normalization = "weighted_mean",
                            from_logits: bool = True, label_smoothing: float = 0.0) -> TensorLike:
    """Inverse-class-frequency weighted cross-entropy `-w_y log p_y`, `w_c = 1/n_c`."""
    return _values(InverseClassFrequency, y_true, y_pred,
                   counts=counts, normalization=normalization, from_logits=from_logits,
                   label_smoothing=label_smoothing)


@_serializable
def focal(y_true: TensorLike, y_pred: TensorLike, gamma: float = 2.0, from_logits: bool = True,
          label_smoothing: float = 0.0) -> TensorLike:
    """Softmax focal loss `-(1 - p_y)^gamma log p_y`. See `Focal`."""
    return _values(Focal, y_true, y_pred,
                   gamma=gamma, from_logits=from_logits, label_smoothing=label_smoothing)


@_serializable
def class_balanced_softmax(y_true: TensorLike, y_pred: TensorLike, beta: float, counts: ArrayLike,
                           normalization: Normalization = "weighted_mean",
                           from_logits: bool = True, label_smoothing: float = 0.0) -> TensorLike:
    """Class-balanced softmax cross-entropy `-w_y log p_y`, `w_c = (1-beta)/(1-beta^n_c)`."""
    return _values(ClassBalancedSoftmax, y_true, y_pred,
                   beta=beta, counts=counts, normalization=normalization, from_logits=from_logits,
                   label_smoothing=label_smoothing)


@_serializable
def class_balanced_focal(y_true: TensorLike, y_pred: TensorLike, beta: float, counts: ArrayLike,
                         gamma: float = 1.0, normalization: Normalization = "weighted_mean",
                         from_logits: bool = True, label_smoothing: float = 0.0) -> TensorLike:
    """Class-balanced softmax focal loss `-w_y (1 - p_y)^gamma log p_y`."""
    return _values(ClassBalancedFocal, y_true, y_pred,
                   beta=beta, counts=counts, gamma=gamma, normalization=normalization,
                   from_logits=from_logits, label_smoothing=label_smoothing)


@_serializable
def balanced_softmax(y_true: TensorLike, y_pred: TensorLike, counts: ArrayLike,
                     from_logits: bool = True, label_smoothing: float = 0.0) -> TensorLike:
    """Balanced softmax `CE(z + log n)`. See `BalancedSoftmax`."""
    return _values(BalancedSoftmax, y_true, y_pred,
                   counts=counts, from_logits=from_logits, label_smoothing=label_smoothing)


@_serializable
def logit_adjusted(y_true: TensorLike, y_pred: TensorLike, counts: ArrayLike, tau: float = 1.0,
                   from_logits: bool = True, label_smoothing: float = 0.0) -> TensorLike:
    """Logit-adjusted cross-entropy `CE(z + tau log pi)`. See `LogitAdjusted`."""
    return _values(LogitAdjusted, y_true, y_pred,
                   counts=counts, tau=tau, from_logits=from_logits,
                   label_smoothing=label_smoothing)


@_serializable
def ldam(y_true: TensorLike, y_pred: TensorLike, counts: ArrayLike, max_margin: float = 0.5,
         scale: float = 30.0, beta: float | None = None,
         normalization: Normalization = "weighted_mean", from_logits: bool = True,
         label_smoothing: float = 0.0) -> TensorLike:
    """Label-distribution-aware margin loss `CE(s (z - D_y onehot(y)))`. See `LDAM`."""
    return _values(LDAM, y_true, y_pred,
                   counts=counts, max_margin=max_margin, scale=scale, beta=beta,
                   normalization=normalization, from_logits=from_logits,
                   label_smoothing=label_smoothing)


@_serializable
def sigmoid_cross_entropy(y_true: TensorLike, y_pred: TensorLike, from_logits: bool = True,
                          label_smoothing: float = 0.0) -> TensorLike:
    """One-vs-all sigmoid cross-entropy summed over classes. See `SigmoidCrossEntropy`."""
    return _values(SigmoidCrossEntropy, y_true, y_pred,
                   from_logits=from_logits, label_smoothing=label_smoothing)


@_serializable
def sigmoid_focal(y_true: TensorLike, y_pred: TensorLike, gamma: float = 2.0,
                  from_logits: bool = True, label_smoothing: float = 0.0) -> TensorLike:
    """Sigmoid focal loss summed over classes. See `SigmoidFocal`."""
    return _values(SigmoidFocal, y_true, y_pred,
                   gamma=gamma, from_logits=from_logits, label_smoothing=label_smoothing)


@_serializable
def class_balanced_sigmoid(y_true: TensorLike, y_pred: TensorLike, beta: float, counts: ArrayLike,
                           normalization: Normalization = "weighted_mean",
                           weighting: Weighting = "example", from_logits: bool = True,
                           label_smoothing: float = 0.0) -> TensorLike:
    """Class-balanced sigmoid cross-entropy `w_y sum_c BCE(z_c, y_c)` (`weighting="class"`:
    `sum_c w_c BCE(z_c, y_c)`). See `ClassBalancedSigmoid`."""
    return _values(ClassBalancedSigmoid, y_true, y_pred,
                   beta=beta, counts=counts, normalization=normalization, weighting=weighting,
                   from_logits=from_logits, label_smoothing=label_smoothing)


@_serializable
def class_balanced_sigmoid_focal(y_true: TensorLike, y_pred: TensorLike, beta: float,
                                 counts: ArrayLike, gamma: float = 1.0,
                                 normalization: Normalization = "weighted_mean",
                                 weighting: Weighting = "example", from_logits: bool = True,
                                 label_smoothing: float = 0.0) -> TensorLike:
    """Class-balanced sigmoid focal loss `w_y sum_c (1 - p_t,c)^gamma BCE(z_c, y_c)`
    (`weighting="class"`: `sum_c w_c (1 - p_t,c)^gamma BCE(z_c, y_c)`). See
    `ClassBalancedSigmoidFocal`."""
    return _values(ClassBalancedSigmoidFocal, y_true, y_pred,
                   beta=beta, counts=counts, gamma=gamma, normalization=normalization,
                   weighting=weighting, from_logits=from_logits,
                   label_smoothing=label_smoothing)


# ---------------------------------------------------------------------------------------------
# Lookup by snake-case name (used by configs: `loss: {name: class_balanced_focal, ...}`), from
# the one registry, `tfimb.catalog`.

LOSSES: dict[str, type[keras.losses.Loss]] = {
    entry.name: globals()[entry.class_name] for entry in catalog.LOSSES}


def get(name: str, **kwargs: Any) -> keras.losses.Loss:
    """Build a tfimb loss from its snake-case name and keyword arguments.

    >>> tfimb.losses.get("class_balanced_focal", beta=0.99, counts=[900, 100], gamma=1.0).name
    'class_balanced_focal'
    """
    if name not in LOSSES:
        raise _checks.invalid_value("name", f"one of {sorted(LOSSES)}", name)
    return LOSSES[name](**kwargs)


# The classes are defined in the modules of this package but are public, documented (the
# doctests of this module), serialized (the "module" of a `.keras` config) and pickled as
# `tfimb.losses.NAME`, as when `tfimb.losses` was a single module.
for _class in (*LOSSES.values(), _ImbalanceLoss, _WeightedLoss):
    _class.__module__ = __name__
del _class
