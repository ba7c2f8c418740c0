"""Multi-label weighting of the class-balanced sigmoid losses (`weighting="example" | "class"`).

"example" (default) is Cui et al.'s rule: the sum of the positive classes' weights scales an
example's C binary terms, so a multi-hot row with no positive weighs 0. "class" weights each
class's binary term by that class's own weight, so every example keeps its loss. Values are
checked against the independent NumPy references of `tests/reference.py`.
"""

import typing

import numpy as np
import pytest

import keras
import tensorflow as tf

import reference
import tfimb
from tfimb import _checks, catalog, cli, losses
from tfimb import config as config_lib

COUNTS = [500, 120, 40, 9, 3]
C = len(COUNTS)
CLASSES = {"class_balanced_sigmoid": tfimb.ClassBalancedSigmoid,
           "class_balanced_sigmoid_focal": tfimb.ClassBalancedSigmoidFocal}
# (loss name, its own arguments besides weighting and normalization, gamma of the reference)
LOSS_ARGS = [("class_balanced_sigmoid", {"beta": 0.999}, 0.0),
             ("class_balanced_sigmoid_focal", {"beta": 0.9999, "gamma": 2.0}, 2.0)]
LOSS_IDS = [name for name, _, _ in LOSS_ARGS]


def _multi_hot(rng, batch=12):
    """Multi-hot rows: several with two or more positives, rows 0 and 5 with none."""
    targets = (rng.random((batch, C)) < 0.35).astype(np.float32)
    targets[[0, 5]] = 0.0
    targets[1] = [1, 0, 0, 1, 1]
    return targets


def _logits(rng, shape):
    return rng.normal(scale=3.0, size=shape).astype(np.float32)


def _class_reference(targets, logits, beta, gamma, **kwargs):
    return reference.sigmoid_loss_class_weighted(targets, logits,
                                                 reference.cb_weights(COUNTS, beta),
                                                 gamma=gamma, **kwargs)


# ---------------------------------------------------------------------------------------------
# weighting="class" against the reference.


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("normalization", ["weighted_mean", "num_classes"])
@pytest.mark.parametrize("name,args,gamma", LOSS_ARGS, ids=LOSS_IDS)
def test_class_weighting_matches_reference_on_multi_hot_rows(rng, name, args, gamma,
                                                             normalization, compiled):
    targets = _multi_hot(rng)
    logits = _logits(rng, targets.shape)
    expected = _class_reference(targets, logits, args["beta"], gamma)
    assert expected[0] > 0 and expected[5] > 0  # The rows with no positive keep their loss.
    kwargs = dict(args, counts=COUNTS, normalization=normalization, weighting="class")
    per_example = CLASSES[name](reduction=None, **kwargs)
    reduced = CLASSES[name](**kwargs)
    wrap = (lambda f: tf.function(lambda y, z: f(y, z))) if compiled else (lambda f: f)
    y, z = tf.constant(targets), tf.constant(logits)
    np.testing.assert_allclose(wrap(per_example)(y, z), expected, rtol=2e-5)
    np.testing.assert_allclose(wrap(reduced)(y, z), expected.mean(), rtol=2e-5)
    function = getattr(losses, name)
    np.testing.assert_allclose(wrap(lambda y, z: function(y, z, **kwargs))(y, z), expected,
                               rtol=2e-5)


@pytest.mark.parametrize("name,args,gamma", LOSS_ARGS, ids=LOSS_IDS)
def test_class_weighting_with_label_smoothing_and_probabilities(rng, name, args, gamma):
    targets = _multi_hot(rng)
    logits = _logits(rng, targets.shape)
    kwargs = dict(args, counts=COUNTS, weighting="class", label_smoothing=0.1)
    expected = _class_reference(targets, logits, args["beta"], gamma, label_smoothing=0.1)
    np.testing.assert_allclose(CLASSES[name](reduction=None, **kwargs)(targets, logits),
                               expected, rtol=2e-5)
    probs = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    np.testing.assert_allclose(
        CLASSES[name](reduction=None, from_logits=False, **kwargs)(targets, probs), expected,
        rtol=1e-4)


def test_all_negative_rows_train_under_class_weighting_only(rng):
    """The issue: under "example" an all-negative row weighs 0 and gets no gradient."""
    targets = np.zeros((2, C), np.float32)
    targets[1, 4] = 1.0  # Row 0 has no positive.
    logits = tf.Variable(_logits(rng, targets.shape))
    for weighting, row_0_trains in (("example", False), ("class", True)):
        loss = tfimb.ClassBalancedSigmoidFocal(0.999, COUNTS, gamma=1.0, weighting=weighting)
        with tf.GradientTape() as tape:
            value = loss(targets, logits)
        gradient = tape.gradient(value, logits).numpy()
        assert np.all(np.isfinite(gradient))
        assert bool(np.any(gradient[0] != 0)) is row_0_trains, weighting
        assert np.any(gradient[1] != 0)
        per_example = tfimb.ClassBalancedSigmoidFocal(0.999, COUNTS, gamma=1.0,
                                                      weighting=weighting, reduction=None)
        assert (float(per_example(targets, logits)[0]) > 0) is row_0_trains, weighting


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_class_weighting_reductions_with_sample_weight(rng, compiled):
    # Each example's C terms weigh C in all, so "weighted_mean" is the sample-weighted mean and
    # "num_classes" follows Keras (sum over the batch size).
    targets = _multi_hot(rng)
    logits = _logits(rng, targets.shape)
    s = rng.uniform(size=len(targets))
    s[:2] = 0.0
    v = _class_reference(targets, logits, 0.99, 1.5)
    expected = {
        "weighted_mean": {"sum_over_batch_size": (s * v).sum() / s.sum(),
                          "sum": (s * v).sum() / s.mean(), None: s * v / s.mean()},
        "num_classes": {"sum_over_batch_size": (s * v).mean(), "sum": (s * v).sum(),
                        None: s * v},
    }
    for normalization, by_reduction in expected.items():
        for reduction, value in by_reduction.items():
            loss = tfimb.ClassBalancedSigmoidFocal(0.99, COUNTS, gamma=1.5, weighting="class",
                                                   normalization=normalization,
                                                   reduction=reduction)
            fn = tf.function(loss) if compiled else loss
            np.testing.assert_allclose(fn(targets, logits, sample_weight=s), value, rtol=1e-5,
                                       err_msg=f"{normalization} {reduction}")


def test_class_weighting_does_not_depend_on_the_rest_of_the_batch(rng):
    """An example's value under "class" is its own: batched with any other rows, alone, or in
    a batch of single-positive rows, it is the same (nothing switches from batch to batch)."""
    targets = _multi_hot(rng)
    logits = _logits(rng, targets.shape)
    loss = tfimb.ClassBalancedSigmoid(0.999, COUNTS, weighting="class", reduction=None)
    whole = np.asarray(loss(targets, logits))
    for i in range(len(targets)):
        np.testing.assert_allclose(loss(targets[i:i + 1], logits[i:i + 1]), whole[i:i + 1],
                                   rtol=1e-6)
    single = np.eye(C, dtype=np.float32)[rng.integers(0, C, 4)]
    mixed = np.concatenate([targets[:1], single])
    np.testing.assert_allclose(loss(mixed, np.concatenate([logits[:1], logits[:4]]))[0],
                               whole[0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# weighting="example" (the default) is unchanged.


@pytest.mark.parametrize("name,args,gamma", LOSS_ARGS, ids=LOSS_IDS)
@pytest.mark.parametrize("normalization", ["weighted_mean", "num_classes"])
def test_example_weighting_is_the_old_rule_and_the_default(rng, name, args, gamma,
                                                           normalization):
    labels = rng.integers(0, C, size=16)
    logits = _logits(rng, (16, C))
    weights = reference.cb_weights(COUNTS, args["beta"])
    targets = _multi_hot(rng, batch=16)
    targets[0, 2] = 1.0  # Keep the weighted mean's denominator away from 0.
    kwargs = dict(args, counts=COUNTS, normalization=normalization)
    for y, onehot in ((labels, np.eye(C)[labels]), (np.eye(C)[labels], np.eye(C)[labels]),
                      (targets, targets)):
        expected = reference.sigmoid_loss(onehot, logits, gamma=gamma, weights=weights,
                                          normalization=normalization)
        default = CLASSES[name](reduction=None, **kwargs)
        explicit = CLASSES[name](reduction=None, weighting="example", **kwargs)
        assert default.weighting == "example"
        np.testing.assert_allclose(default(y, logits), expected, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(explicit(y, logits), expected, rtol=2e-5, atol=1e-7)
        compiled = tf.function(lambda y, z: CLASSES[name](**kwargs)(y, z))
        np.testing.assert_allclose(compiled(tf.constant(y), tf.constant(logits)),
                                   expected.mean(), rtol=2e-5)
    # An all-negative row weighs 0 under the example rule (documented).
    values = np.asarray(default(targets, logits))
    assert np.all(values[~targets.any(axis=1)] == 0) and np.all(values[targets.any(axis=1)] > 0)


def test_example_weighting_keeps_the_published_values():
    logits = [[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]]
    for weighting in ({}, {"weighting": "example"}):
        np.testing.assert_allclose(
            tfimb.ClassBalancedSigmoid(0.999, [100, 10, 1], normalization="num_classes",
                                       **weighting)([0, 1, 2], logits), 1.625324, atol=2e-6)
        np.testing.assert_allclose(
            tfimb.ClassBalancedSigmoidFocal(0.9999, [5000, 500, 50], gamma=1.0,
                                            normalization="num_classes", **weighting)(
                [0, 1, 2], logits), 0.862883, atol=2e-6)


def test_class_weighting_differs_from_example_weighting_on_single_labels(rng):
    """The two rules are different losses even for one-hot rows: the default (example) must
    be the one sparse and one-hot labels get."""
    labels = rng.integers(0, C, size=8)
    logits = _logits(rng, (8, C))
    example = tfimb.ClassBalancedSigmoid(0.999, COUNTS, reduction=None)
    by_class = tfimb.ClassBalancedSigmoid(0.999, COUNTS, weighting="class", reduction=None)
    np.testing.assert_allclose(example(np.eye(C)[labels], logits), example(labels, logits),
                               rtol=1e-6)
    np.testing.assert_allclose(by_class(np.eye(C)[labels], logits), by_class(labels, logits),
                               rtol=1e-6)
    assert not np.allclose(example(labels, logits), by_class(labels, logits), rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Argument, config, serialization, catalogue.


@pytest.mark.parametrize("cls", list(CLASSES.values()))
def test_bad_weighting_is_a_one_line_keras_form_error(cls):
    message = ("Invalid value for argument `weighting`. Expected one of ('example', 'class'). "
               "Received: weighting='x'")
    for build in (lambda: cls(0.9, COUNTS, weighting="x"),
                  lambda: losses.get(catalog_name(cls), beta=0.9, counts=COUNTS,
                                     weighting="x"),
                  lambda: getattr(losses, catalog_name(cls))([0], [[0.0] * C], 0.9, COUNTS,
                                                             weighting="x")):
        with pytest.raises(ValueError) as error:
            build()
        assert str(error.value) == message
        assert "\n" not in str(error.value)
    for bad in (None, "Class", ["class"]):
        with pytest.raises(ValueError, match=r"`weighting`. Expected one of"):
            cls(0.9, COUNTS, weighting=bad)


def catalog_name(cls):
    return next(e.name for e in catalog.LOSSES if e.class_name == cls.__name__)


@pytest.mark.parametrize("name", list(CLASSES))
def test_config_round_trip_keeps_weighting(rng, name):
    targets = _multi_hot(rng)
    logits = _logits(rng, targets.shape)
    loss = losses.get(name, beta=0.99, counts=COUNTS, weighting="class", label_smoothing=0.05)
    config = loss.get_config()
    assert config["weighting"] == "class"
    restored = type(loss).from_config(config)
    assert restored.weighting == "class" and restored.get_config() == config
    deserialized = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(deserialized) is type(loss) and deserialized.get_config() == config
    for other in (restored, deserialized):
        np.testing.assert_allclose(other(targets, logits), loss(targets, logits), rtol=1e-7)
    # A config written before the argument existed loads with the old rule.
    old = {k: v for k, v in config.items() if k != "weighting"}
    assert type(loss).from_config(old).weighting == "example"


@pytest.mark.slow
def test_keras_file_round_trip_with_class_weighting(tmp_path, rng):
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = _multi_hot(rng, batch=64)
    counts = tfimb.class_counts(y, C, multi_label=True)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(C)])
    model.compile(optimizer="sgd",
                  loss=tfimb.ClassBalancedSigmoidFocal(0.999, counts, gamma=1.0,
                                                       weighting="class"))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True
    assert type(loaded.loss) is tfimb.ClassBalancedSigmoidFocal
    assert loaded.loss.weighting == "class"
    assert loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    expected = reference.sigmoid_loss_class_weighted(
        y, np.asarray(model(x)), reference.cb_weights(counts, 0.999), gamma=1.0)
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0, batch_size=64),
                               expected.mean(), rtol=1e-5)


def test_catalog_declares_weighting_once(capsys):
    assert catalog.WEIGHTINGS == ("example", "class")
    assert typing.get_args(_checks.Weighting) == catalog.WEIGHTINGS
    takes = [e.name for e in catalog.LOSSES if "weighting" in e.options]
    assert takes == list(CLASSES)
    for name in takes:
        assert "weighting" in catalog.config_keys(name)
        assert f"weighting='{catalog.WEIGHTINGS[0]}'" in catalog.BY_NAME[name].arguments
        default = losses.LOSSES[name](0.9, COUNTS).weighting
        assert default == catalog.WEIGHTINGS[0]
    assert not catalog.takes("class_balanced_softmax", "weighting")
    assert cli.main(["losses"]) == 0
    out = capsys.readouterr().out
    assert "weighting='example'" in out and "'class'" in out
    assert catalog.WEIGHTING_NOTE in out


def test_config_accepts_and_checks_weighting():
    from tfimb.experiments import classify

    raw = {"loss": {"name": "class_balanced_sigmoid_focal", "beta": 0.999,
                    "weighting": "class"}}
    cfg = config_lib.resolve(raw)
    assert cfg.loss.options["weighting"] == "class"
    assert classify.make_loss(cfg, COUNTS).weighting == "class"
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.resolve({"loss": dict(raw["loss"], weighting="x")})
    assert str(error.value) == ("Invalid value for key `loss.weighting`. Expected one of "
                                "('example', 'class'). Received: loss.weighting='x'")
    with pytest.raises(config_lib.ConfigError, match="Unknown key `loss.weighting`"):
        config_lib.resolve({"loss": {"name": "class_balanced_focal", "beta": 0.999,
                                     "weighting": "class"}})
