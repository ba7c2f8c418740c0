"""Losses under tf.distribute.MirroredStrategy over 2 logical CPUs.

`num_classes` normalization: a mirrored step equals a single-device step. `weighted_mean`: each
replica's weighted mean, averaged over the replicas (checked against NumPy).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import reference

SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import tfimb

COUNTS = [500, 60, 7, 3]
rng = np.random.default_rng(0)
x = rng.normal(size=(16, 6)).astype(np.float32)
y = np.array([0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 1, 0, 3, 0, 0, 0])  # Rare classes unevenly split.
out = {}
for normalization in ("weighted_mean", "num_classes"):
    for mode in ("single", "mirrored"):
        strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if mode == "mirrored"
                    else tf.distribute.get_strategy())
        with strategy.scope():
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
                4, kernel_initializer=keras.initializers.Constant(0.1))])
            model.compile(optimizer=keras.optimizers.SGD(1.0),
                          loss=tfimb.ClassBalancedFocal(0.99, COUNTS, gamma=0.5,
                                                        normalization=normalization))
        before = model.evaluate(x, y, batch_size=16, verbose=0)
        logits = model.predict(x, batch_size=16, verbose=0).tolist()
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        out[f"{normalization}/{mode}"] = {
            "replicas": strategy.num_replicas_in_sync, "loss": before, "logits": logits,
            "kernel": model.layers[-1].kernel.numpy().tolist()}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_step_equals_single_device_step():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    single, mirrored = out["num_classes/single"], out["num_classes/mirrored"]
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["kernel"], single["kernel"], rtol=1e-5, atol=1e-7)

    # weighted_mean: the mean over the two replicas' halves of their weighted means.
    y = np.array([0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 1, 0, 3, 0, 0, 0])
    w = reference.cb_weights([500, 60, 7, 3], 0.99)[y]
    single, mirrored = out["weighted_mean/single"], out["weighted_mean/mirrored"]
    l = reference.loss(np.eye(4)[y], np.array(single["logits"]), gamma=0.5)
    np.testing.assert_allclose(single["loss"], (w * l).sum() / w.sum(), rtol=1e-5)
    halves = [(w[h] * l[h]).sum() / w[h].sum() for h in (slice(0, 8), slice(8, 16))]
    np.testing.assert_allclose(mirrored["loss"], np.mean(halves), rtol=1e-5)
