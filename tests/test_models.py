import numpy as np
import pytest

import keras

import tfimb
from tfimb import models


def test_resnet_shapes_and_sizes():
    for name, params in [("resnet8", 0.078e6), ("resnet20", 0.27e6), ("resnet32", 0.46e6),
                         ("resnet18_cifar", 11.17e6)]:
        model = models.get(name, num_classes=10)
        assert model.output.shape == (None, 10)
        assert model.count_params() == pytest.approx(params, rel=0.03), name
    out = models.resnet20(num_classes=7, head="cosine")(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 7)


def test_resnet_logits_are_float32_under_mixed_precision(mixed_policy):
    mixed_policy("mixed_bfloat16")
    model = models.resnet20()
    assert model.layers[-2].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"


def test_cosine_classifier_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    layer = models.CosineClassifier(4)
    out = np.asarray(layer(x))
    w = np.asarray(layer.kernel)
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(out) <= 1 + 1e-6)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, models.CosineClassifier(4)(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


def test_model_argument_errors():
    with pytest.raises(ValueError, match=r"`name`.*resnet20"):
        models.get("resnet50")
    with pytest.raises(ValueError, match=r"`head`.*'dense', 'cosine'"):
        models.resnet20(head="linear")
    with pytest.raises(ValueError, match=r"`num_classes`.*num_classes=1"):
        models.resnet20(num_classes=1)
    with pytest.raises(ValueError, match=r"`units`.*units=0"):
        tfimb.models.CosineClassifier(0)
