"""FusedBatchNormalization against Keras' own BatchNormalization: values, gradients, statistics."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from tfimb import config, data
from tfimb.experiments import classify
from tfimb.fused_batch_norm import (FusedBatchNormalization, fuse_batch_norms,
                                    unfuse_batch_norms)


def _pair(**kwargs):
    reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, **kwargs)
    reference.build((None, 5, 6, 4))
    fused.build((None, 5, 6, 4))
    rng = np.random.default_rng(0)
    weights = [rng.normal(1.0, 0.3, w.shape).astype(np.float32) if "variance" in w.path
               else rng.normal(0.0, 0.5, w.shape).astype(np.float32)
               for w in reference.weights]
    weights = [np.abs(w) if "variance" in v.path else w
               for w, v in zip(weights, reference.weights)]
    reference.set_weights(weights)
    fused.set_weights(weights)
    return reference, fused


def _step(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        weights = tf.constant(np.random.default_rng(3).normal(size=(8, 5, 6, 4)), y.dtype)
        loss = tf.reduce_sum(y * weights)  # Every gradient non-zero.
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return y, grads


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_values_gradients_and_moving_statistics_match_keras(graph, training):
    reference, fused = _pair()
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (8, 5, 6, 4)), tf.float32)
    step = tf.function(_step, reduce_retracing=True) if graph else _step
    ys, gs = step(reference, x, training)
    yf, gf = step(fused, x, training)
    np.testing.assert_allclose(yf.numpy(), ys.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(gf, gs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    for a, b in zip(fused.non_trainable_weights, reference.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)


def test_unsupported_inputs_fall_back_to_keras():
    layer = FusedBatchNormalization()
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    expected = keras.layers.BatchNormalization()(x, training=True)
    np.testing.assert_allclose(layer(x, training=True).numpy(), expected.numpy(), atol=1e-6)


def test_bfloat16_policy_is_close_and_keeps_float32_statistics():
    reference, fused = _pair(dtype="mixed_bfloat16")
    x = tf.constant(np.random.default_rng(2).normal(size=(8, 5, 6, 4)), tf.bfloat16)
    ys, yf = reference(x, training=True), fused(x, training=True)
    assert yf.dtype == tf.bfloat16 and fused.moving_mean.dtype == "float32"
    np.testing.assert_allclose(tf.cast(yf, tf.float32).numpy(),
                               tf.cast(ys, tf.float32).numpy(), atol=0.05)
    np.testing.assert_allclose(fused.moving_variance.numpy(), reference.moving_variance.numpy(),
                               rtol=1e-2)


def test_training_models_are_fused_and_saved_models_are_plain_keras(tmp_path):
    cfg = config.resolve({}, ["data.source=digits", "model.name=resnet20", "imbalance=null"])
    dataset = data.load(cfg.data, None)
    model = classify.build_model(cfg, dataset)
    layers = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert layers and all(type(l) is FusedBatchNormalization for l in layers)
    x = dataset.test.images[:4].astype(np.float32)
    classify.save_model(model, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert not [l for l in loaded._flatten_layers() if type(l) is FusedBatchNormalization]
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    again = fuse_batch_norms(unfuse_batch_norms(model))
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    # Synchronised statistics keep Keras' layer (its moments need an all-reduce).
    synced = classify.build_model(config.resolve({}, ["data.source=digits", "model.name=resnet20",
                                                   "imbalance=null",
                                                   "distribute.sync_batch_norm=true"]), dataset)
    assert not [l for l in synced._flatten_layers() if type(l) is FusedBatchNormalization]
