"""Fused batch normalisation for training on TensorFlow: a drop-in `BatchNormalization`.

Keras 3's TensorFlow backend normalises with `tf.nn.moments` + `tf.nn.batch_normalization`:
several passes over every activation and, under mixed_bfloat16, a float32 copy of it for the
moments. TensorFlow's `FusedBatchNormV3` does the forward and the backward pass in one oneDNN
kernel each (PyTorch's path on CPUs). On the 2-core AMX-bf16 development VM this alone took a
ResNet-20 `fit` from 327 to 502 img/s in mixed_bfloat16 (benchmarks/NOTES.md).

The math is Keras': in training, `y = gamma (x - mean) / sqrt(var + epsilon) + beta` with the
batch mean and biased variance over every axis but the channels, and the moving statistics
updated as `moving = moving * momentum + batch * (1 - momentum)` with the biased variance;
in inference, the moving statistics. Inputs that the fused kernel does not take (not 4-D
channels-last, masks, synchronised statistics) go through Keras' own implementation.

`tfimb.experiments.classify.build_model` swaps this layer in for the classifier's batch norms
while training (the models in `tfimb.models` stay pure Keras), and
`tfimb.experiments.classify.save_model` swaps Keras' layer back before writing `model.keras`,
which therefore loads on any backend without tfimb.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfimb._checks import TensorLike

_FUSED_DTYPES = (tf.float32, tf.bfloat16, tf.float16)


@keras.saving.register_keras_serializable(package="tfimb")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by `FusedBatchNormV3` (same arguments)."""

    def _fusable(self, inputs, mask):
        return (mask is None and not self.synchronized and len(inputs.shape) == 4
                and self.axis in (-1, 3) and inputs.dtype in _FUSED_DTYPES)

    def call(self, inputs: TensorLike, training: bool | None = None,
             mask: TensorLike | None = None) -> tf.Tensor:
        inputs = tf.convert_to_tensor(inputs)
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if training and self.trainable:
            outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=scale, offset=offset, mean=tf.zeros([0]),
                variance=tf.zeros([0]), epsilon=self.epsilon, data_format="NHWC",
                is_training=True)
            # The op returns the unbiased (n - 1) variance; Keras keeps the biased one.
            count = tf.cast(tf.size(inputs) // channels, tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(
                self.moving_mean * momentum + tf.cast(mean, self.moving_mean.dtype)
                * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + tf.cast(variance, self.moving_variance.dtype)
                * (1.0 - momentum))
            return outputs
        outputs, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset,
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
        return outputs


def _swap(model, source, target):
    def clone(layer):
        config = layer.get_config()
        if type(layer) is source:
            return target.from_config(config)
        return layer.__class__.from_config(config)

    swapped = keras.models.clone_model(model, clone_function=clone, recursive=True)
    swapped.set_weights(model.get_weights())
    return swapped


def fuse_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of a functional `model` with fused batch norms (nested models too), same weights."""
    return _swap(model, keras.layers.BatchNormalization, FusedBatchNormalization)


def unfuse_batch_norms(model: keras.Model) -> keras.Model:
    """The inverse of `fuse_batch_norms`: Keras' own layer back, same weights."""
    return _swap(model, FusedBatchNormalization, keras.layers.BatchNormalization)
