"""tfimb.losses, tfimb.metrics and tfimb.models run on Keras' JAX backend, without TensorFlow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfimb
from tfimb import losses

pytest.importorskip("jax")

SCRIPT = r"""
import json, sys
import numpy as np
import keras
import tfimb
from tfimb import losses, metrics, models
assert keras.backend.backend() == "jax"
data = json.loads(sys.stdin.read())
labels, logits = np.array(data["labels"]), np.array(data["logits"], np.float32)
out = {}
for name, kwargs in data["cases"]:
    loss = losses.get(name, **kwargs)
    out[name] = float(loss(labels, logits))
    out[name + "_onehot_none"] = np.asarray(
        losses.get(name, reduction=None, **kwargs)(np.eye(logits.shape[1])[labels], logits)).tolist()
# Gradients inside jax.jit at the extremes.
import jax
grad = jax.jit(jax.grad(lambda z: tfimb.ClassBalancedFocal(0.999, data["counts"], 0.5)(labels, z)))
out["grad_finite"] = bool(np.all(np.isfinite(np.asarray(grad(logits * 1e4)))))
group = metrics.group_accuracies([1, 2], num_classes=logits.shape[1])
for m in group:
    m.update_state(labels, logits)
    out[m.name] = float(m.result())
out["cosine_shape"] = list(models.CosineClassifier(3)(np.ones((2, 4), np.float32)).shape)
out["tensorflow_imported"] = "tensorflow" in sys.modules
print(json.dumps(out))
"""

COUNTS = [300, 50, 7, 2]
CASES = [
    ("softmax_cross_entropy", {"label_smoothing": 0.1}),
    ("focal", {"gamma": 0.5}),
    ("inverse_class_frequency", {"counts": COUNTS}),
    ("class_balanced_softmax", {"beta": 0.99, "counts": COUNTS, "normalization": "num_classes"}),
    ("class_balanced_focal", {"beta": 0.999, "counts": COUNTS, "gamma": 2.0}),
    ("balanced_softmax", {"counts": COUNTS}),
    ("logit_adjusted", {"counts": COUNTS, "tau": 1.5}),
    ("ldam", {"counts": COUNTS}),
    ("sigmoid_focal", {"gamma": 2.0, "label_smoothing": 0.1}),
    ("class_balanced_sigmoid", {"beta": 0.999, "counts": COUNTS}),
    ("class_balanced_sigmoid_focal", {"beta": 0.9999, "counts": COUNTS, "gamma": 1.0,
                                      "normalization": "num_classes"}),
]


@pytest.mark.slow
def test_jax_backend_gives_the_same_values():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=20)
    logits = rng.normal(scale=2.0, size=(20, 4)).astype(np.float32)
    payload = json.dumps({"labels": labels.tolist(), "logits": logits.tolist(),
                          "cases": CASES, "counts": COUNTS})
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], input=payload, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["tensorflow_imported"] is False
    assert out["grad_finite"] is True
    assert out["cosine_shape"] == [2, 3]
    for name, kwargs in CASES:
        np.testing.assert_allclose(out[name], float(losses.get(name, **kwargs)(labels, logits)),
                                   rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(
            out[name + "_onehot_none"],
            losses.get(name, reduction=None, **kwargs)(labels, logits), rtol=1e-5, atol=1e-7,
            err_msg=name)
    for metric in tfimb.metrics.group_accuracies([1, 2], num_classes=4):
        metric.update_state(labels, logits)
        assert out[metric.name] == pytest.approx(float(metric.result())), metric.name
