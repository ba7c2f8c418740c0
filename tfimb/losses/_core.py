"""The computation every tfimb loss shares, on `keras.ops` only (any Keras backend).

Label checks and targets (`_targets`), the per-example softmax and one-vs-all sigmoid losses
with their focal modulators, margins and logit offsets (`_per_example`), per-example class
weights, and the per-example values of the loss functions (`_imbalance_loss`). The loss classes
(`tfimb.losses._base` and the family modules) only hold arguments and call these; the rules
they implement are in the `tfimb.losses` docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import keras
from keras import ops

from tfimb._checks import TensorLike

_TINY = float(np.finfo(np.float32).tiny)


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
    weighting: str = "example",
) -> tuple[TensorLike, TensorLike | None]:
    """Per-example losses and per-example weights (None when unweighted).

    softmax:
    logits' = scale * (z - margins * y) + logit_offset
    l       = -sum_c q_c (1 - p'_c)^gamma log p'_c,   p' = softmax(logits'), q = smoothed y
    sigmoid (one-vs-all, Cui et al.'s "sigmoid" and "focal"):
    l       = sum_c m_c BCE(z_c, q_c),  BCE = softplus(z) - q z,
              m_c = exp(-gamma (q_c z_c + softplus(-z_c)))   ((1 - p_t)^gamma for q in {0, 1})
    both, weighting "example" (the losses are unweighted):
    w       = sum_c y_c w_c  (= w_y for one-hot y; weights sum to C)
    sigmoid, weighting "class" (each class's term weighted by its class, in the losses):
    l       = sum_c w_c m_c BCE(z_c, q_c),  w = 1  (= mean_c w_c: every example's C terms
              weigh C in all, as unweighted, whatever its labels)
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
        if class_weights is not None and weighting == "class":
            losses = _sigmoid_losses(targets, y_pred, from_logits, label_smoothing, gamma,
                                     ops.convert_to_tensor(class_weights, dtype))
            losses, _ = _weighted(losses, valid, targets, None, dtype)
            return losses, ops.ones_like(losses)
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
                    label_smoothing: float, gamma: float,
                    class_weights: TensorLike | None = None) -> TensorLike:
    """`sum_c m_c (softplus(z_c) - q_c z_c)`, q = smoothed targets: stable for any logit.
    With `class_weights` w (weighting "class"), `sum_c w_c m_c (softplus(z_c) - q_c z_c)`.

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
    if class_weights is not None:
        per_class = per_class * class_weights
    return ops.sum(per_class, axis=-1)


def _imbalance_loss(y_true: TensorLike, y_pred: TensorLike, *,
                    normalization: str = "weighted_mean", **kwargs: Any) -> TensorLike:
    """Per-example values of every tfimb loss function (arguments already validated).

    value = w_y l                 (normalization "num_classes", weights summing to C)
          = w_y l / mean_batch(w)  (normalization "weighted_mean": the mean is sum w l / sum w)
    (weighting "class": w = 1 and l already class-weighted, so both give l.)
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
