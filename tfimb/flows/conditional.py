"""RealNVP's class-conditional base distribution (the paper's appendix trains a
class-conditional CelebA model; Glow's `ycond`), and the class weights of imbalanced training.

    log p(x | y) = log N(z; mu_y, diag(sigma_y^2)) + log|det dz/dx|,   z = f(x),
    sigma_y = exp(log_sigma_y)

The flow f is shared by every class; only the base distribution depends on y. z has the
image's shape [H, W, C] and holds every factored-out latent, so mu_y and log sigma_y are
[H, W, C] per class: a learned mean and log-scale for every latent dimension and class. Both
start at zero, so a new conditional model is the unconditional one (standard normal latent).
Sampling class y at temperature T: z = mu_y + T sigma_y eps, eps ~ N(0, I), x = f^-1(z).

Class weights (`class_weights(counts, "balanced")`): w_y = n / (C n_y) over the C classes with
training examples, so that the weights average 1 over the training set (sum_i w_{y_i} = n) and
every class carries the same total weight n / C.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfimb import _checks
from tfimb._checks import ArrayLike, TensorLike

tfd = tfp.distributions

CLASS_WEIGHTINGS = ("none", "balanced")


class ClassPrior(keras.layers.Layer):
    """N(mu_y, diag(sigma_y^2)) over latents of `event_shape` [H, W, C], for `num_classes`
    classes: `mean` and `log_scale` [num_classes, H, W, C], zero-initialised (standard normal
    for every class)."""

    def __init__(self, num_classes: int, event_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = _checks.check_int("num_classes", num_classes, 1)
        self.event_shape = tuple(int(d) for d in event_shape)
        shape = (self.num_classes,) + self.event_shape
        self.mean = self.add_weight(shape=shape, name="mean", initializer="zeros")
        self.log_scale = self.add_weight(shape=shape, name="log_scale", initializer="zeros")

    def parameters(self, labels: TensorLike) -> tuple[tf.Tensor, tf.Tensor]:
        """(mu_y, log sigma_y) [B, H, W, C] of int class ids `labels` [B]."""
        return tf.gather(self.mean, labels), tf.gather(self.log_scale, labels)

    def log_prob(self, z: TensorLike, labels: TensorLike) -> tf.Tensor:
        """log N(z; mu_y, diag(sigma_y^2)) per example (nats), summed over the event."""
        mean, log_scale = self.parameters(labels)
        eps = (z - mean) * tf.exp(-log_scale)
        dims = math.prod(self.event_shape)
        return (tf.reduce_sum(-0.5 * tf.square(eps) - log_scale, axis=[-3, -2, -1])
                - 0.5 * dims * math.log(2.0 * math.pi))

    def sample(self, labels: TensorLike, temperature: TensorLike = 1.0,
               seed: int | None = None) -> tf.Tensor:
        """z = mu_y + temperature * sigma_y * eps, one latent per class id in `labels`."""
        mean, log_scale = self.parameters(labels)
        if seed is None:
            eps = tf.random.normal(tf.shape(mean))
        else:
            eps = tf.random.stateless_normal(tf.shape(mean), [int(seed), 0])
        return mean + temperature * tf.exp(log_scale) * eps

    def distribution(self, labels: TensorLike) -> tfp.distributions.Distribution:
        """The same density as a TFP distribution, batch [B], event [H, W, C]."""
        mean, log_scale = self.parameters(labels)
        return tfd.Independent(tfd.Normal(mean, tf.exp(log_scale)), reinterpreted_batch_ndims=3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes,
                "event_shape": list(self.event_shape)}


def _describe(labels: Any) -> str:
    """A one-line description of a labels argument for an error message."""
    shape = getattr(labels, "shape", None)
    if shape is not None:
        return f"labels of shape {tuple(shape)}"
    return f"labels={labels!r}"[:120]


def class_ids(labels: TensorLike, num_classes: int, batch: Any = None) -> tf.Tensor:
    """`labels` as int32 class ids [B], checked: integers, 0 <= id < num_classes, and B equal
    to `batch` where both are known. Eagerly a one-line ValueError; in a graph an assertion
    (a gather on a GPU returns zeros for an id out of range instead of failing)."""
    if isinstance(labels, (list, tuple)) or np.isscalar(labels):
        labels = np.asarray(labels)
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
        raise ValueError("Invalid value for argument `labels`. Expected integer class ids. "
                         f"Received: {_describe(labels)} of dtype {labels.dtype.name}")
    if labels.shape.rank == 2 and labels.shape[-1] == 1:  # Keras' sparse labels [B, 1].
        labels = labels[:, 0]
    if labels.shape.rank != 1:
        raise ValueError("Invalid value for argument `labels`. Expected one class id per "
                         f"example, shape [batch]. Received: {_describe(labels)}")
    if isinstance(batch, int) and labels.shape[0] is not None and labels.shape[0] != batch:
        raise ValueError(f"Invalid value for argument `labels`. Expected {batch} class ids, "
                         f"one per example. Received: {_describe(labels)}")
    labels = tf.cast(labels, tf.int32)
    if tf.executing_eagerly():
        values = labels.numpy()
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(f"Invalid value for argument `labels`. Expected class ids with "
                             f"0 <= id < num_classes={num_classes}. Received: labels "
                             f"containing {np.unique(bad)[:10].tolist()}")
        return labels
    check = tf.debugging.Assert(
        tf.reduce_all((labels >= 0) & (labels < num_classes)),
        [f"Invalid value for argument `labels`. Expected class ids with 0 <= id < "
         f"num_classes={num_classes}. Received: labels =", labels], summarize=20)
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def checked_labels(num_classes: int | None, labels: TensorLike | None,
                   batch: Any = None) -> tf.Tensor | None:
    """The `labels` argument of a RealNVP with `num_classes`: `class_ids` of a conditional
    model (required), None for an unconditional one (which refuses labels). One-line errors in
    Keras' form."""
    if num_classes is None:
        if labels is not None:
            raise ValueError("Invalid value for argument `labels`. Expected None: this RealNVP "
                             "is unconditional (num_classes=None). Received: "
                             f"{_describe(labels)}")
        return None
    if labels is None:
        raise ValueError("Invalid value for argument `labels`. Expected a class id per example "
                         f"(0 <= id < {num_classes}): this RealNVP is class-conditional "
                         f"(num_classes={num_classes}). Received: labels=None")
    return class_ids(labels, num_classes, batch)


def class_weights(counts: ArrayLike, weighting: str = "balanced") -> np.ndarray:
    """Per-class weights of each example's bits/dim in the training loss, float64 [C].

    "balanced": w_y = n / (C n_y), n the training examples and C the classes that have any,
    so the weights average 1 over the training set; a class without training examples gets 0
    (it never appears in a batch). "none": every weight 1.
    """
    if weighting not in CLASS_WEIGHTINGS:
        raise _checks.invalid_value("weighting", f"one of {CLASS_WEIGHTINGS}", weighting)
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size < 1 or np.any(counts < 0) or not counts.sum() > 0:
        raise _checks.invalid_value("counts", "a 1-D sequence of per-class training counts "
                                    "with at least one example", counts.tolist())
    if weighting == "none":
        return np.ones_like(counts)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def per_class_mean(values: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Mean of `values` per class id in `labels`, float64 [num_classes]; NaN for a class with
    no example."""
    values, labels = np.asarray(values, np.float64), np.asarray(labels).astype(np.int64)
    sums = np.bincount(labels, values, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
