import numpy as np
import pytest

import keras

import tfimb
from tfimb import catalog, models


def test_resnet_shapes_and_sizes():
    for name, params in [("resnet8", 0.078e6), ("resnet20", 0.27e6), ("resnet32", 0.46e6),
                         ("resnet18_cifar", 11.17e6)]:
        model = models.get(name, num_classes=10)
        assert model.output.shape == (None, 10)
        assert model.count_params() == pytest.approx(params, rel=0.03), name
    out = models.resnet20(num_classes=7, head="cosine")(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 7)


def test_reference_resnet32_has_the_reference_codes_parameters():
    """Option A shortcuts have no parameters: He et al.'s CIFAR ResNet-32 as the CIFAR-10-LT
    reference code builds it has 464,154 trainable parameters for 10 classes (convolutions,
    batch-norm scales and offsets, the dense layer), the projections 2,944 more."""
    def trainable(**kwargs):
        model = models.resnet32(num_classes=10, **kwargs)
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    assert trainable(shortcut="identity", padding="symmetric") == 464_154
    assert trainable() == 464_154 + 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def _block_input_and_skip(model, block):
    """A model from the image to (the block's input, its shortcut's output)."""
    stage = int(block[5])
    previous = f"stage{stage - 1}_block5_out" if stage > 1 else "stem_relu"
    return keras.Model(model.input, [model.get_layer(previous).output,
                                     model.get_layer(f"{block}_skip_merge").output])


def test_identity_shortcut_takes_every_other_pixel_and_zero_pads_the_channels():
    model = models.resnet32(shortcut="identity")
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    for block, (before, after) in (("stage2_block1", (16, 32)), ("stage3_block1", (32, 64))):
        x, skip = (np.asarray(t) for t in _block_input_and_skip(model, block)(images))
        assert x.shape[-1] == before and skip.shape[-1] == after
        pad = (after - before) // 2
        np.testing.assert_array_equal(skip[..., pad:pad + before], x[:, ::2, ::2, :])
        assert not skip[..., :pad].any() and not skip[..., pad + before:].any()


@pytest.mark.parametrize("padding, first", [("same", 1), ("symmetric", 0)])
def test_stride_two_padding_decides_which_pixels_the_convolution_is_centred_on(padding, first):
    """A 3x3 stride-2 convolution whose kernel copies the centre pixel: TensorFlow's SAME takes
    pixels 2i + 1 (the stride-2 shortcut takes 2i), the symmetric padding pixels 2i."""
    from tfimb.models import resnet

    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, resnet._conv_bn(inputs, 2, 3, 2, "t", 0.0, relu=False,
                                                padding=padding))
    kernel = np.zeros((3, 3, 2, 2), np.float32)
    kernel[1, 1] = np.eye(2)
    model.get_layer("t_conv").set_weights([kernel])
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 2)).astype(np.float32)
    out = np.asarray(model(x, training=False)) * np.sqrt(1 + 1e-5)  # Fresh batch norm.
    np.testing.assert_allclose(out, x[:, first::2, first::2, :], rtol=1e-5, atol=1e-6)


def test_reference_resnet_saves_and_loads_with_keras_layers_alone(tmp_path):
    from tfimb.experiments import classify

    model = models.resnet8(shortcut="identity", padding="symmetric")
    classify.save_model(model, tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(type(layer).__module__.startswith("tfimb") for layer in loaded.layers[:-1])


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


def test_the_catalog_names_the_models_tfimb_builds():
    # A config checks model names against the catalog, without Keras: both must agree.
    assert sorted(models.MODELS) == sorted(catalog.MODEL_NAMES)
    assert set(models.CIFAR_RESNETS) <= set(models.MODELS)
    assert set(models.TAKES_WEIGHTS) <= set(models.MODELS) - set(models.CIFAR_RESNETS)
    for name in catalog.CIFAR_RESNETS:
        for shortcut in catalog.SHORTCUTS:
            for padding in catalog.PADDINGS:
                models.get(name, num_classes=2, input_shape=(8, 8, 3), head=catalog.HEADS[-1],
                           shortcut=shortcut, padding=padding)


def test_model_argument_errors():
    with pytest.raises(ValueError, match=r"`name`.*resnet20"):
        models.get("resnet152")  # Not a name (keras.applications.ResNet152 is).
    with pytest.raises(ValueError, match=r"`head`.*'dense', 'cosine'"):
        models.resnet20(head="linear")
    with pytest.raises(ValueError, match=r"`num_classes`.*num_classes=1"):
        models.resnet20(num_classes=1)
    with pytest.raises(ValueError, match=r"`units`.*units=0"):
        tfimb.models.CosineClassifier(0)
    with pytest.raises(ValueError, match=r"`shortcut`.*'identity'.*shortcut='option_a'"):
        models.resnet32(shortcut="option_a")
    with pytest.raises(ValueError, match=r"`padding`.*'symmetric'.*padding='valid'"):
        models.resnet32(padding="valid")
    with pytest.raises(ValueError, match=r"`shortcut`.*Expected 'projection' for 'resnet50'.*"
                                         r"Received: shortcut='identity'$"):
        models.get("resnet50", shortcut="identity")
    with pytest.raises(ValueError, match=r"`padding`.*Expected 'same' for 'resnet50'.*"
                                         r"Received: padding='symmetric'$"):
        models.get("resnet50", padding="symmetric")


def test_larger_image_backbones_by_name(tmp_path):
    import tfimb.models as models_lib
    from tfimb import config

    model = models_lib.get("resnet50", num_classes=5, input_shape=(32, 32, 3), head="cosine")
    assert model.name == "resnet50" and model.output_shape == (None, 5)
    assert model.get_layer("logits").dtype_policy.name == "float32"
    assert 23_000_000 < model.count_params() < 24_000_000  # ResNet-50 without its top + head.
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert model(x, training=False).shape == (2, 5)
    # Any keras.applications class by name; a weights file is loaded into the backbone.
    mobile = models_lib.get("keras.applications.MobileNetV2", num_classes=3,
                            input_shape=(32, 32, 3))
    backbone = next(layer for layer in mobile.layers if isinstance(layer, keras.Model))
    backbone.save_weights(tmp_path / "mobilenet.weights.h5")
    loaded = models_lib.get("keras.applications.MobileNetV2", num_classes=3,
                            input_shape=(32, 32, 3), weights=str(tmp_path / "mobilenet.weights.h5"))
    inner = next(layer for layer in loaded.layers if isinstance(layer, keras.Model))
    for a, b in zip(backbone.get_weights(), inner.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert models_lib.is_model_name("keras.applications.ResNet50")
    for bad in ("keras.applications.NoSuchNet", "keras.applications._private", "vgg", 3):
        assert not models_lib.is_model_name(bad)
    with pytest.raises(ValueError, match="keras.applications.<Class>"):
        models_lib.get("keras.applications.NoSuchNet", num_classes=3)
    with pytest.raises(ValueError, match="`weights`"):
        models_lib.get("resnet20", num_classes=3, weights="w.h5")
    cfg = config.resolve({}, ["model.name=keras.applications.EfficientNetB0"])
    assert cfg.model.name == "keras.applications.EfficientNetB0"
    with pytest.raises(config.ConfigError, match=r"`model.name`.*keras.applications.<Class>"):
        config.resolve({}, ["model.name=keras.applications.NoSuchNet"])
    with pytest.raises(config.ConfigError, match=r"`model.weights`.*Received: model.weights='w'"):
        config.resolve({}, ["model.name=resnet32", "model.weights=w"])
