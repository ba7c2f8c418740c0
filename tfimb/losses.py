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

import numpy as np

import keras
from keras import ops

from tfimb import _checks, catalog
from tfimb import weights as _weights
from tfimb._checks import ArrayLike, Normalization, TensorLike

_TINY = float(np.finfo(np.float32).tiny)


# ---------------------------------------------------------------------------------------------
# Core computation shared by every loss.


def _compute_dtype(dtype: str | None) -> str:
    """The dtype a loss computes in: the requested one, promoted to at least float32."""
    policy = keras.dtype_policies.get(dtype or keras.backend.floatx())
    compute = policy.compute_dtype
    return "float32" if compute in ("float16", "bfloat16") else compute


def _concrete(x: TensorLike) -> np.ndarray | None:
    """x as a NumPy array when its value is known (eager), else None (inside a traced graph)."""
    try:
        if callable(getattr(x, "numpy", None)):  # TF eager tensors: avoids a NumPy 2 warning.
            return np.asarray(x.numpy())
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # Symbolic TF tensors and JAX tracers cannot be read; that is expected.
        return None


def _plain_number(value: float) -> int | float:
    """A label value for an error message: 3 rather than 3.0 when it is integral."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _check_sparse_labels(labels: TensorLike, num_classes: int) -> None:
    values = _concrete(labels)
    if values is None:
        return
    bad = values[~np.isfinite(values) | (values != np.round(values))
                 | (values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(
            "Invalid value for argument `y_true`. Expected integer class ids in "
            f"[0, {num_classes}) for logits of width {num_classes}. Received: y_true "
            f"containing {[_plain_number(v) for v in np.unique(bad)[:10]]}"
        )


def _check_dense_labels(labels: TensorLike) -> None:
    values = _concrete(labels)
    if values is None:
        return
    if not np.all(np.isfinite(values)) or np.any(values < 0) or \
            np.any(np.abs(values.sum(axis=-1) - 1.0) > 1e-3):
        raise ValueError(
            "Invalid value for argument `y_true`. Expected one-hot (or soft) label rows of "
            "non-negative values summing to 1, or sparse integer class ids. Received: y_true "
            f"with rows such as {values.reshape(-1, values.shape[-1])[:2].tolist()}"
        )


def _check_multi_hot_labels(labels: TensorLike) -> None:
    values = _concrete(labels)
    if values is None:
        return
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
        bad = values[~np.isfinite(values) | (values < 0) | (values > 1)]
        raise ValueError(
            "Invalid value for argument `y_true`. Expected multi-hot (or one-hot, or soft) "
            "label rows with values in [0, 1], or sparse integer class ids. Received: y_true "
            f"containing {[_plain_number(v) for v in np.unique(bad)[:10]]}"
        )


def _targets(y_true: TensorLike, y_pred: TensorLike, num_classes: int, dtype: str,
             multi_label: bool = False) -> tuple[TensorLike, TensorLike | None]:
    """Unsmoothed targets `(..., C)` and a validity mask (None for dense labels).

    Dense labels are distributions (rows summing to 1) for softmax losses and independent
    per-class targets in [0, 1] (multi-hot) for sigmoid losses (`multi_label`)."""
    y_true = ops.convert_to_tensor(y_true)
    rank_true, rank_pred = len(y_true.shape), len(y_pred.shape)
    batch_true, batch_pred = tuple(y_true.shape[:1]), tuple(y_pred.shape[:1])
    if rank_true and rank_pred and None not in batch_true + batch_pred and \
            batch_true != batch_pred:
        raise ValueError(
            "Invalid shape for argument `y_true`. Expected one label per row of `y_pred` "
            f"(batch {batch_pred[0]}). Received: y_true.shape={tuple(y_true.shape)}, "
            f"y_pred.shape={tuple(y_pred.shape)}")
    if rank_true == rank_pred and y_true.shape[-1] == num_classes:
        (_check_multi_hot_labels if multi_label else _check_dense_labels)(y_true)
        return ops.cast(y_true, dtype), None
    if rank_true == rank_pred and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    elif rank_true != rank_pred - 1:
        raise ValueError(
            "Invalid shape for argument `y_true`. Expected sparse labels of shape "
            f"{tuple(y_pred.shape[:-1])} (or with a trailing 1) or one-hot labels of shape "
            f"{tuple(y_pred.shape)} for `y_pred` of shape {tuple(y_pred.shape)}. Received: "
            f"y_true.shape={tuple(y_true.shape)}"
        )
    _check_sparse_labels(y_true, num_classes)
    valid = ops.logical_and(ops.greater_equal(y_true, 0), ops.less(y_true, num_classes))
    if "float" in str(y_true.dtype):  # Keras hands labels over as floats: 2.7 is no class.
        valid = ops.logical_and(valid, ops.equal(y_true, ops.floor(y_true)))
    labels = ops.cast(y_true, "int32")
    return ops.one_hot(labels, num_classes, dtype=dtype), valid


def _log1m_softmax(logits: TensorLike, log_p: TensorLike, lse: TensorLike) -> TensorLike:
    """`log(1 - softmax(logits))` without cancellation, clipping or infinite gradients.

    `log_p` and `lse` are the caller's log-softmax and logsumexp of `logits`.

    Only the largest logit can have p > 1/2; for it `log(1 - p) = lse(others) - lse(all)` is
    exact. For every other class `log1p(-p)` is accurate, and the `where` feeds it a harmless
    value at the largest logit so that its unused branch cannot produce a NaN gradient.
    """
    num_classes = logits.shape[-1]
    top = ops.expand_dims(ops.cast(ops.argmax(logits, axis=-1), "int32"), -1)
    is_top = ops.equal(top, ops.arange(num_classes, dtype="int32"))
    lse_others = ops.logsumexp(ops.where(is_top, float("-inf"), logits), axis=-1, keepdims=True)
    safe_log_p = ops.where(is_top, float(np.log(0.5)), log_p)
    return ops.where(is_top, lse_others - lse, ops.log1p(-ops.exp(safe_log_p)))


def _per_example(
    y_true: TensorLike,
    y_pred: TensorLike,
    *,
    from_logits: bool,
    label_smoothing: float,
    gamma: float = 0.0,
    class_weights: np.ndarray | None = None,
    logit_offset: np.ndarray | None = None,
    margins: np.ndarray | None = None,
    scale: float = 1.0,
    num_classes: int | None = None,
    dtype: str | None = None,
    activation: str = "softmax",
) -> tuple[TensorLike, TensorLike | None]:
    """Unweighted per-example losses and per-example class weights (None when unweighted).

    softmax:
    logits' = scale * (z - margins * y) + logit_offset
    l       = -sum_c q_c (1 - p'_c)^gamma log p'_c,   p' = softmax(logits'), q = smoothed y
    sigmoid (one-vs-all, Cui et al.'s "sigmoid" and "focal"):
    l       = sum_c m_c BCE(z_c, q_c),  BCE = softplus(z) - q z,
              m_c = exp(-gamma (q_c z_c + softplus(-z_c)))   ((1 - p_t)^gamma for q in {0, 1})
    both:
    w       = sum_c y_c w_c  (= w_y for one-hot y; weights sum to C)
    """
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = dtype or _compute_dtype(
        y_pred.dtype if "float" in str(y_pred.dtype) else None
    )
    # A copy, so that any tensor-like works as Keras' own losses allow: a cast to the same
    # dtype hands a variable back unchanged, and variables lack ops some kernels need.
    y_pred = ops.copy(ops.cast(y_pred, dtype))
    width = y_pred.shape[-1]
    if width is None:
        raise ValueError(
            "Invalid shape for argument `y_pred`. Expected a known number of classes in the "
            f"last dimension. Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    if num_classes is not None and width != num_classes:
        raise ValueError(
            "Invalid shape for argument `y_pred`. Expected logits for "
            f"{num_classes} classes, one per entry of `counts`. Received: "
            f"y_pred.shape={tuple(y_pred.shape)} (width {width})"
        )
    if activation == "sigmoid":
        targets, valid = _targets(y_true, y_pred, width, dtype, multi_label=True)
        losses = _sigmoid_losses(targets, y_pred, from_logits, label_smoothing, gamma)
        return _weighted(losses, valid, targets, class_weights, dtype)
    if width < 2:
        raise ValueError(
            "Invalid shape for argument `y_pred`. Expected at least two classes in the last "
            f"dimension for a softmax loss. Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    targets, valid = _targets(y_true, y_pred, width, dtype)

    logits = y_pred if from_logits else ops.log(ops.clip(y_pred, _TINY, 1.0))
    if margins is not None:
        logits = logits - ops.convert_to_tensor(margins, dtype) * targets
    if scale != 1.0:
        logits = logits * scale
    if logit_offset is not None:
        logits = logits + ops.convert_to_tensor(logit_offset, dtype)

    lse = ops.logsumexp(logits, axis=-1, keepdims=True)
    log_p = logits - lse
    smoothed = targets
    if label_smoothing:
        smoothed = targets * (1.0 - label_smoothing) + label_smoothing / width
    per_class = -smoothed * log_p
    if gamma:
        per_class = per_class * ops.exp(gamma * _log1m_softmax(logits, log_p, lse))
    return _weighted(ops.sum(per_class, axis=-1), valid, targets, class_weights, dtype)


def _weighted(losses: TensorLike, valid: TensorLike | None, targets: TensorLike,
              class_weights: np.ndarray | None,
              dtype: str) -> tuple[TensorLike, TensorLike | None]:
    """(losses with NaN for invalid labels, per-example weights `sum_c y_c w_c` or None)."""
    if valid is not None:
        losses = ops.where(valid, losses, float("nan"))
    if class_weights is None:
        return losses, None
    return losses, ops.sum(targets * ops.convert_to_tensor(class_weights, dtype), -1)


def _sigmoid_losses(targets: TensorLike, y_pred: TensorLike, from_logits: bool,
                    label_smoothing: float, gamma: float) -> TensorLike:
    """`sum_c m_c (softplus(z_c) - q_c z_c)`, q = smoothed targets: stable for any logit.

    softplus never overflows, so neither the cross-entropy nor the focal modulator (computed in
    log space, as Cui et al.'s code does) needs clipping: both stay finite, and so do their
    gradients, for logits of any size and for gamma < 1.
    """
    if from_logits:
        logits = y_pred
    else:  # Probabilities: back to logits, clipped only at the smallest normal float.
        logits = (ops.log(ops.clip(y_pred, _TINY, 1.0))
                  - ops.log(ops.clip(1.0 - y_pred, _TINY, 1.0)))
    q = targets
    if label_smoothing:  # Keras' binary rule: q (1 - e) + e / 2.
        q = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    per_class = ops.softplus(logits) - q * logits
    if gamma:
        per_class = per_class * ops.exp(-gamma * (q * logits + ops.softplus(-logits)))
    return ops.sum(per_class, axis=-1)


def _imbalance_loss(y_true: TensorLike, y_pred: TensorLike, *,
                    normalization: str = "weighted_mean", **kwargs: Any) -> TensorLike:
    """Per-example values of every tfimb loss function (arguments already validated).

    value = w_y l                 (normalization "num_classes", weights summing to C)
          = w_y l / mean_batch(w)  (normalization "weighted_mean": the mean is sum w l / sum w)
    """
    losses, weights = _per_example(y_true, y_pred, **kwargs)
    if weights is None:
        return losses
    if normalization == "weighted_mean":
        weights = weights / ops.mean(weights)
    return losses * weights


def _replicas_in_sync() -> int:
    """Replicas of the current `tf.distribute` strategy (1 on other backends).

    Keras sums the replicas' gradients, so a per-replica mean loss is divided by this, as Keras'
    own `scale_loss_for_distribution` does; like it, this imports TensorFlow only when the
    TensorFlow backend is active.
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _ldam_margins(counts: np.ndarray, max_margin: float) -> np.ndarray:
    """`D_c = max_margin * n_c^(-1/4) / max_k n_k^(-1/4)`: the rarest class gets max_margin."""
    quarter = np.power(counts, -0.25)
    return max_margin * quarter / quarter.max()


def _check_margin_and_scale(max_margin: float, scale: float) -> tuple[float, float]:
    return (_checks.check_range("max_margin", max_margin, 0.0),
            _checks.check_range("scale", scale, 0.0, low_inclusive=False))


# ---------------------------------------------------------------------------------------------
# Loss functions: per-example values (their mean is the batch loss), computed by the class.


_F = TypeVar("_F", bound=Callable[..., Any])


def _serializable(function: _F) -> _F:
    """Register a loss function for `.keras` files under "tfimb", keeping its signature for type
    checkers (Keras' own decorator is untyped, so it would hide it)."""
    return keras.saving.register_keras_serializable(package="tfimb")(function)


def _values(cls: type[_ImbalanceLoss], y_true: TensorLike, y_pred: TensorLike,
            **kwargs: Any) -> TensorLike:
    """Per-example values of loss class `cls`: the class's own computation, `reduction=None`
    (for weighted losses under "weighted_mean", values whose batch mean is the weighted mean).
    Computes in y_pred's dtype when that is float64, else in float32."""
    dtype = "float64" if "float64" in str(getattr(y_pred, "dtype", "")) else None
    return cls(reduction=None, dtype=dtype, **kwargs)(y_true, y_pred)


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
                           from_logits: bool = True, label_smoothing: float = 0.0) -> TensorLike:
    """Class-balanced sigmoid cross-entropy `w_y sum_c BCE(z_c, y_c)`. See
    `ClassBalancedSigmoid`."""
    return _values(ClassBalancedSigmoid, y_true, y_pred,
                   beta=beta, counts=counts, normalization=normalization, from_logits=from_logits,
                   label_smoothing=label_smoothing)


@_serializable
def class_balanced_sigmoid_focal(y_true: TensorLike, y_pred: TensorLike, beta: float,
                                 counts: ArrayLike, gamma: float = 1.0,
                                 normalization: Normalization = "weighted_mean",
                                 from_logits: bool = True,
                                 label_smoothing: float = 0.0) -> TensorLike:
    """Class-balanced sigmoid focal loss `w_y sum_c (1 - p_t,c)^gamma BCE(z_c, y_c)`. See
    `ClassBalancedSigmoidFocal`."""
    return _values(ClassBalancedSigmoidFocal, y_true, y_pred,
                   beta=beta, counts=counts, gamma=gamma, normalization=normalization,
                   from_logits=from_logits, label_smoothing=label_smoothing)


# ---------------------------------------------------------------------------------------------
# Loss classes.


class _ImbalanceLoss(keras.losses.Loss):
    """Base: common arguments, float32-or-wider computation, config round trip."""

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
            label_smoothing=self.label_smoothing, dtype=self.dtype, **self._loss_kwargs())

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
                label_smoothing=self.label_smoothing, dtype=self.dtype, **kwargs)
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
class Focal(_ImbalanceLoss):
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
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)
        self.gamma = _checks.check_gamma(gamma)

    def _loss_kwargs(self) -> dict[str, Any]:
        return dict(gamma=self.gamma)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="tfimb")
class ClassBalancedSoftmax(_WeightedLoss):
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
        super().__init__(
            counts, _weights.class_balanced_weights(counts, beta), normalization,
            from_logits=from_logits, label_smoothing=label_smoothing, reduction=reduction,
            name=name, dtype=dtype)
        self.beta = float(beta)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="tfimb")
class ClassBalancedFocal(_WeightedLoss):
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
        super().__init__(
            counts, _weights.class_balanced_weights(counts, beta), normalization,
            from_logits=from_logits, label_smoothing=label_smoothing, reduction=reduction,
            name=name, dtype=dtype)
        self.beta = float(beta)
        self.gamma = _checks.check_gamma(gamma)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {**super()._loss_kwargs(), "gamma": self.gamma}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta, "gamma": self.gamma}


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


@keras.saving.register_keras_serializable(package="tfimb")
class LDAM(_ImbalanceLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

    Per example: `l = CE(s * (z - D * onehot(y)))` with per-class margins
    `D_c = max_margin * n_c^(-1/4) / max_k n_k^(-1/4)` (the rarest class gets `max_margin`).
    `z` is meant to be a cosine similarity in [-1, 1]: use `tfimb.models.CosineClassifier` as
    the last layer and leave `from_logits=True`. The authors pair it with deferred re-weighting
    (DRW: class-balanced weights with beta = 0.9999 from 80% of training on); `beta` turns the
    class-balanced weights on (`None`: unweighted), `set_beta` switches them during training
    (`tfimb train` does so with `loss.drw_epoch`).

    Args:
        counts: training examples per class over the whole training set (1-D, all > 0).
        max_margin: the largest margin, `max_margin >= 0` (default 0.5).
        scale: `s > 0`, multiplies the cosine logits (default 30.0).
        beta: `None` (default, unweighted) or `0 <= beta < 1` for class-balanced weights
            `w_c = (1 - beta) / (1 - beta^{n_c})` as in `ClassBalancedSoftmax`.
        normalization: batch reduction of the weighted loss, `"weighted_mean"` (default, as the
            authors' `F.cross_entropy(weight=w)`) or `"num_classes"`.
        from_logits, label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Reference: Cao, Wei, Gaidon, Arechiga, Ma. "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss." https://arxiv.org/abs/1906.07413

    Example:

    >>> counts = [5000, 500, 50]
    >>> inputs = keras.Input((64,))
    >>> model = keras.Model(inputs, tfimb.models.CosineClassifier(3)(inputs))
    >>> model.compile(optimizer="sgd", loss=tfimb.LDAM(counts, max_margin=0.5, scale=30.0))
    >>> cosines = [[0.9, 0.1, 0.0], [0.1, 0.8, 0.2], [0.0, 0.2, 0.7]]
    >>> round(float(tfimb.LDAM(counts)([0, 1, 2], cosines)), 6)
    0.231486
    """

    def __init__(self, counts: ArrayLike, max_margin: float = 0.5, scale: float = 30.0,
                 beta: float | None = None, normalization: Normalization = "weighted_mean",
                 from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str = "ldam",
                 dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)
        counts = _checks.check_counts(counts)
        self.counts = _counts_config(counts)
        self.max_margin, self.scale = _check_margin_and_scale(max_margin, scale)
        self.margins = _ldam_margins(counts, self.max_margin)
        self.normalization = _checks.check_normalization(normalization)
        self.set_beta(beta)

    def set_beta(self, beta: float | None) -> None:
        """Switch class-balanced re-weighting on (`beta`) or off (`None`).

        Deferred re-weighting (DRW) calls this part-way through training; a compiled train
        function must then be re-traced (`model.make_train_function(force=True)`), since the
        weights are constants of the traced graph.
        """
        self.class_weights: np.ndarray | None = None
        if beta is not None:
            self.class_weights = _weights.class_balanced_weights(self.counts, beta)
            beta = float(beta)
        self.beta = beta

    def _loss_kwargs(self) -> dict[str, Any]:
        kwargs = dict(margins=self.margins.astype(self.dtype), scale=self.scale,
                      num_classes=len(self.counts))
        if self.class_weights is not None:
            kwargs.update(class_weights=self.class_weights.astype(self.dtype),
                          normalization=self.normalization)
        return kwargs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "counts": self.counts, "max_margin": self.max_margin,
                "scale": self.scale, "beta": self.beta, "normalization": self.normalization}




@keras.saving.register_keras_serializable(package="tfimb")
class SigmoidCrossEntropy(_ImbalanceLoss):
    """One-vs-all sigmoid cross-entropy (Cui et al.'s "sigmoid" loss type, unweighted).

    Per example: `l = sum_c BCE(z_c, y_c)`, `BCE(z, y) = softplus(z) - y z`
    (`= -y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))`), stable for logits of any size.

    Labels: sparse class ids, one-hot rows, or multi-hot rows (several classes per example,
    values in [0, 1]) for multi-label data. Each example's loss sums, over classes, the binary
    cross-entropy of a one-vs-all sigmoid; no softmax couples the classes. Predict single-label
    data with `argmax(z)`, multi-label data with `sigmoid(z_c) > threshold`. Cui et al. start
    the last layer's bias at `-log(C - 1)` (prior 1/C per class) so that the C - 1 negatives do
    not swamp the first steps; `tfimb train` does the same for the sigmoid losses.

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

    def __init__(self, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size",
                 name: str = "sigmoid_cross_entropy", dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)

    def _loss_kwargs(self) -> dict[str, Any]:
        return dict(activation="sigmoid")


@keras.saving.register_keras_serializable(package="tfimb")
class SigmoidFocal(_ImbalanceLoss):
    """Sigmoid focal loss (Lin et al., ICCV 2017; Cui et al.'s "focal" loss type, unweighted).

    Per example: `l = sum_c (1 - p_t,c)^gamma BCE(z_c, y_c)`, `p_t,c = sigmoid(z_c)` for a
    positive and `1 - sigmoid(z_c)` for a negative. The modulator is computed in log space,
    `exp(-gamma (y_c z_c + softplus(-z_c)))` (Cui et al.'s form, through softplus), so nothing
    is clipped and nothing overflows. `gamma = 0` is `SigmoidCrossEntropy`. No `alpha`: class
    balance comes from `ClassBalancedSigmoidFocal`'s weights instead.

    Labels: sparse class ids, one-hot rows, or multi-hot rows (several classes per example,
    values in [0, 1]) for multi-label data. Each example's loss sums, over classes, the binary
    cross-entropy of a one-vs-all sigmoid; no softmax couples the classes. Predict single-label
    data with `argmax(z)`, multi-label data with `sigmoid(z_c) > threshold`. Cui et al. start
    the last layer's bias at `-log(C - 1)` (prior 1/C per class) so that the C - 1 negatives do
    not swamp the first steps; `tfimb train` does the same for the sigmoid losses.

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

    def __init__(self, gamma: float = 2.0, from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str = "sigmoid_focal",
                 dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)
        self.gamma = _checks.check_gamma(gamma)

    def _loss_kwargs(self) -> dict[str, Any]:
        return dict(activation="sigmoid", gamma=self.gamma)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="tfimb")
class ClassBalancedSigmoid(_WeightedLoss):
    """Class-balanced sigmoid cross-entropy (Cui et al., CVPR 2019, loss type "sigmoid").

    Per example: `l = w_y sum_c BCE(z_c, y_c)`, `w_c = (1 - beta) / (1 - beta^{n_c})` (float64,
    rescaled to sum to C): the weight of the example's class scales all C binary terms, as in
    the authors' code. For multi-hot labels the example's weight is the sum of its positive
    classes' weights (their rule; an example with no positive class then weighs 0), and `counts`
    are the positives per class (`tfimb.class_counts(labels, C, multi_label=True)`).
    `normalization="num_classes"` (plain batch mean) is the authors' reduction; the default
    `"weighted_mean"` divides by the batch's total weight instead (module docstring).

    Labels: sparse class ids, one-hot rows, or multi-hot rows (several classes per example,
    values in [0, 1]) for multi-label data. Each example's loss sums, over classes, the binary
    cross-entropy of a one-vs-all sigmoid; no softmax couples the classes. Predict single-label
    data with `argmax(z)`, multi-label data with `sigmoid(z_c) > threshold`. Cui et al. start
    the last layer's bias at `-log(C - 1)` (prior 1/C per class) so that the C - 1 negatives do
    not swamp the first steps; `tfimb train` does the same for the sigmoid losses.

    Args:
        beta: `0 <= beta < 1`.
        counts: training examples (positives) per class over the whole training set.
        normalization: `"weighted_mean"` (default) or `"num_classes"`.
        from_logits, label_smoothing, reduction, name, dtype: as in `SigmoidCrossEntropy`.

    Reference: Cui, Jia, Lin, Song, Belongie. "Class-Balanced Loss Based on Effective Number
    of Samples." https://arxiv.org/abs/1901.05555

    Example:

    >>> loss = tfimb.ClassBalancedSigmoid(0.999, [100, 10, 1], normalization="num_classes")
    >>> round(float(loss([0, 1, 2], [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])), 6)
    1.625324
    """

    def __init__(self, beta: float, counts: ArrayLike,
                 normalization: Normalization = "weighted_mean", from_logits: bool = True,
                 label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "class_balanced_sigmoid", dtype: str | None = None) -> None:
        super().__init__(
            counts, _weights.class_balanced_weights(counts, beta), normalization,
            from_logits=from_logits, label_smoothing=label_smoothing, reduction=reduction,
            name=name, dtype=dtype)
        self.beta = float(beta)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {**super()._loss_kwargs(), "activation": "sigmoid"}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="tfimb")
class ClassBalancedSigmoidFocal(_WeightedLoss):
    """Class-balanced sigmoid focal loss (Cui et al., CVPR 2019, loss type "focal").

    Per example: `l = w_y sum_c (1 - p_t,c)^gamma BCE(z_c, y_c)` with the class-balanced weights
    of `ClassBalancedSigmoid` and the modulator of `SigmoidFocal`. The authors' best loss on
    CIFAR-10-LT at imbalance 100 (beta = 0.9999, gamma = 1.0, `normalization="num_classes"`:
    74.57% top-1, their Table 2). `gamma = 0` gives `ClassBalancedSigmoid`, `beta = 0` gives
    `SigmoidFocal`.

    Labels: sparse class ids, one-hot rows, or multi-hot rows (several classes per example,
    values in [0, 1]) for multi-label data. Each example's loss sums, over classes, the binary
    cross-entropy of a one-vs-all sigmoid; no softmax couples the classes. Predict single-label
    data with `argmax(z)`, multi-label data with `sigmoid(z_c) > threshold`. Cui et al. start
    the last layer's bias at `-log(C - 1)` (prior 1/C per class) so that the C - 1 negatives do
    not swamp the first steps; `tfimb train` does the same for the sigmoid losses.

    Args:
        beta: `0 <= beta < 1`.
        counts: training examples (positives) per class over the whole training set.
        gamma: focusing parameter, `gamma >= 0` (default 1.0).
        normalization: `"weighted_mean"` (default) or `"num_classes"`.
        from_logits, label_smoothing, reduction, name, dtype: as in `SigmoidCrossEntropy`.

    Reference: Cui et al. https://arxiv.org/abs/1901.05555

    Example:

    >>> loss = tfimb.ClassBalancedSigmoidFocal(0.9999, [5000, 500, 50], gamma=1.0,
    ...                                        normalization="num_classes")
    >>> round(float(loss([0, 1, 2], [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]])), 6)
    0.862883
    """

    def __init__(self, beta: float, counts: ArrayLike, gamma: float = 1.0,
                 normalization: Normalization = "weighted_mean", from_logits: bool = True,
                 label_smoothing: float = 0.0, reduction: str | None = "sum_over_batch_size",
                 name: str = "class_balanced_sigmoid_focal", dtype: str | None = None) -> None:
        super().__init__(
            counts, _weights.class_balanced_weights(counts, beta), normalization,
            from_logits=from_logits, label_smoothing=label_smoothing, reduction=reduction,
            name=name, dtype=dtype)
        self.beta = float(beta)
        self.gamma = _checks.check_gamma(gamma)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {**super()._loss_kwargs(), "activation": "sigmoid", "gamma": self.gamma}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta, "gamma": self.gamma}


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
