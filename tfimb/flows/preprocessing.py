"""RealNVP's data preprocessing and bits/dim (Dinh et al. 2017, section 4.1; the authors' code).

    dequantise:  x = (x_int + u) / 256,  u ~ U[0, 1)^D  (or u = 1/2: mid-bin, deterministic)
    logit:       p = alpha + (1 - 2 alpha) x,  l = log p - log(1 - p),  alpha = 0.05
    log|dl/dx| = sum_d [log(1 - 2 alpha) - log p_d - log(1 - p_d)]
    log p(x) = log p_model(l) + log|dl/dx|
    bits/dim = (-log p(x) + D log 256) / (D log 2)   (D = H W C; natural logs)

The `D log 256` term turns the density of x in [0, 1)^D into the probability of the discrete
image (each of the 256^D bins has volume 256^-D).
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfimb._checks import TensorLike

ALPHA = 0.05
NOISES = ("uniform", "mid")


def dequantize(images: TensorLike, noise: str = "uniform",
               seed: TensorLike | None = None) -> tf.Tensor:
    """uint8 (or integer-valued) images -> x in [0, 1): (x_int + u) / 256.

    `noise`: "uniform" (u ~ U[0, 1), training and evaluation) or "mid" (u = 1/2:
    deterministic, for encoding and serving). `seed`: a stateless seed pair (int32 [2]) or
    None for TensorFlow's global generator.
    """
    images = tf.cast(images, tf.float32)
    if noise == "mid":
        u = 0.5
    elif noise == "uniform":
        if seed is None:
            u = tf.random.uniform(tf.shape(images))
        else:
            u = tf.random.stateless_uniform(tf.shape(images), seed)
    else:
        raise ValueError(f"Invalid value for argument `noise`. Expected one of {NOISES}. "
                         f"Received: noise={noise!r}")
    return (images + u) / 256.0


def to_logit(x: TensorLike, alpha: float = ALPHA) -> tuple[tf.Tensor, tf.Tensor]:
    """x in [0, 1] -> (l, log|dl/dx| summed over each example's event [H, W, C])."""
    p = alpha + (1.0 - 2.0 * alpha) * x
    log_p, log_1mp = tf.math.log(p), tf.math.log1p(-p)
    log_det = tf.reduce_sum(math.log(1.0 - 2.0 * alpha) - log_p - log_1mp, axis=[-3, -2, -1])
    return log_p - log_1mp, log_det


def from_logit(l: TensorLike, alpha: float = ALPHA) -> tf.Tensor:
    """l -> x = (sigmoid(l) - alpha) / (1 - 2 alpha), clipped to [0, 1]."""
    return tf.clip_by_value((tf.sigmoid(l) - alpha) / (1.0 - 2.0 * alpha), 0.0, 1.0)


def to_uint8(x: TensorLike) -> tf.Tensor:
    """x in [0, 1] -> the uint8 bin it lies in: floor(256 x), clipped to 255 (inverts
    `dequantize` exactly for x inside a bin)."""
    return tf.cast(tf.clip_by_value(tf.floor(256.0 * x), 0.0, 255.0), tf.uint8)


def bits_per_dim(log_px: TensorLike, num_dims: int) -> TensorLike:
    """Bits/dim of discrete images from log p(x) (nats) of their dequantised x in [0, 1)^D."""
    return (-log_px + num_dims * math.log(256.0)) / (num_dims * math.log(2.0))
