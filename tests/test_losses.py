import inspect

import numpy as np
import pytest

import keras
import tensorflow as tf

import reference
import tfimb
from tfimb import catalog, losses

COUNTS = [500, 120, 40, 9, 3]
C = len(COUNTS)

# (loss name, constructor kwargs): several beta / gamma / tau and both normalizations.
CASES = [
    ("softmax_cross_entropy", {}),
    ("focal", {"gamma": 0.5}),
    ("focal", {"gamma": 2.0}),
    ("focal", {"gamma": 5.0}),
    ("inverse_class_frequency", {"counts": COUNTS}),
    ("inverse_class_frequency", {"counts": COUNTS, "normalization": "num_classes"}),
    ("class_balanced_softmax", {"beta": 0.9, "counts": COUNTS}),
    ("class_balanced_softmax", {"beta": 0.999, "counts": COUNTS,
                                "normalization": "num_classes"}),
    ("class_balanced_focal", {"beta": 0.99, "counts": COUNTS, "gamma": 0.5}),
    ("class_balanced_focal", {"beta": 0.9999, "counts": COUNTS, "gamma": 2.0,
                              "normalization": "num_classes"}),
    ("class_balanced_focal", {"beta": 0.999, "counts": COUNTS, "gamma": 1.0}),
    ("balanced_softmax", {"counts": COUNTS}),
    ("logit_adjusted", {"counts": COUNTS, "tau": 0.5}),
    ("logit_adjusted", {"counts": COUNTS, "tau": 2.0}),
    ("ldam", {"counts": COUNTS, "max_margin": 0.5, "scale": 30.0}),
    ("ldam", {"counts": COUNTS, "max_margin": 0.3, "scale": 10.0}),
    ("ldam", {"counts": COUNTS, "max_margin": 0.5, "scale": 30.0, "beta": 0.9999}),
    ("sigmoid_cross_entropy", {}),
    ("sigmoid_focal", {"gamma": 0.5}),
    ("sigmoid_focal", {"gamma": 2.0}),
    ("class_balanced_sigmoid", {"beta": 0.999, "counts": COUNTS}),
    ("class_balanced_sigmoid", {"beta": 0.9999, "counts": COUNTS,
                                "normalization": "num_classes"}),
    ("class_balanced_sigmoid_focal", {"beta": 0.9999, "counts": COUNTS, "gamma": 1.0,
                                      "normalization": "num_classes"}),
    ("class_balanced_sigmoid_focal", {"beta": 0.99, "counts": COUNTS, "gamma": 0.5}),
    # Class-wise weighting (multi-label data; tests/test_losses_multilabel.py has the rest).
    ("class_balanced_sigmoid", {"beta": 0.999, "counts": COUNTS, "weighting": "class"}),
    ("class_balanced_sigmoid_focal", {"beta": 0.9999, "counts": COUNTS, "gamma": 2.0,
                                      "normalization": "num_classes", "weighting": "class"}),
]
CASE_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items() if k != 'counts')}"
            for name, kw in CASES]

FUNCTIONS = {name: getattr(losses, name) for name in losses.LOSSES}


def _data(rng, batch=16, spread=3.0, ldam=False):
    labels = rng.integers(0, C, size=batch)
    logits = rng.normal(scale=spread, size=(batch, C))
    if ldam:  # LDAM expects cosine logits in [-1, 1].
        logits = np.tanh(logits)
    return labels, np.eye(C)[labels], logits.astype(np.float32)


def _label_forms(labels, onehot):
    return {"sparse": labels, "sparse_column": labels[:, None], "onehot": onehot}


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_numpy_reference(rng, name, kwargs, label_smoothing):
    labels, onehot, logits = _data(rng, ldam=name == "ldam")
    kwargs = dict(kwargs, label_smoothing=label_smoothing)
    expected = reference.reference_for(name, kwargs, onehot, logits)

    per_example = losses.get(name, reduction=None, **kwargs)
    reduced = losses.get(name, **kwargs)
    compiled = tf.function(lambda y, z: reduced(y, z))
    for form, y in _label_forms(labels, onehot).items():
        np.testing.assert_allclose(per_example(y, logits), expected, rtol=2e-5, atol=1e-6,
                                   err_msg=form)
        np.testing.assert_allclose(reduced(y, logits), expected.mean(), rtol=2e-5, err_msg=form)
        np.testing.assert_allclose(compiled(tf.constant(y), tf.constant(logits)),
                                   expected.mean(), rtol=2e-5, err_msg=form)
        np.testing.assert_allclose(FUNCTIONS[name](y, logits, **kwargs), expected, rtol=2e-5,
                                   atol=1e-6, err_msg=form)


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_probabilities_input_equals_logits_input(rng, name, kwargs):
    labels, _, logits = _data(rng, ldam=name == "ldam")
    if name in catalog.SIGMOID:  # Independent per-class probabilities.
        probs = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    else:
        probs = reference.softmax(logits.astype(np.float64)).astype(np.float32)
    from_logits = losses.get(name, reduction=None, **kwargs)(labels, logits)
    from_probs = losses.get(name, reduction=None, from_logits=False, **kwargs)(labels, probs)
    if name == "ldam":  # Margins apply to whatever the model outputs: log p here, not z.
        log_p = np.log(probs.astype(np.float64))
        expected = reference.reference_for(name, kwargs, np.eye(C)[labels], log_p)
        np.testing.assert_allclose(from_probs, expected, rtol=1e-4, atol=1e-6)
    else:
        np.testing.assert_allclose(from_probs, from_logits, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_weighted_mean_reductions_with_sample_weight(rng, compiled):
    labels, onehot, logits = _data(rng)
    s = rng.uniform(size=labels.shape)
    s[:3] = 0.0  # Zero-weight examples must leave the denominator too.
    w = reference.cb_weights(COUNTS, 0.99)[labels]
    fl = reference.loss(onehot, logits, gamma=1.5)
    mean = (s * w * fl).sum() / (s * w).sum()
    expected = {"sum_over_batch_size": mean, "mean": mean, "mean_with_sample_weight": mean,
                "sum": mean * len(labels), None: s * w * fl / (s * w).mean()}
    for reduction, value in expected.items():
        loss = tfimb.ClassBalancedFocal(0.99, COUNTS, gamma=1.5, reduction=reduction)
        fn = tf.function(loss) if compiled else loss
        np.testing.assert_allclose(fn(labels, logits, sample_weight=s), value, rtol=1e-5,
                                   err_msg=str(reduction))
        np.testing.assert_allclose(fn(labels[:, None], logits, sample_weight=s[:, None]), value,
                                   rtol=1e-5, err_msg=str(reduction))


def test_num_classes_reductions_follow_keras(rng):
    labels, onehot, logits = _data(rng)
    s = rng.uniform(size=labels.shape)
    wl = reference.cb_weights(COUNTS, 0.99)[labels] * reference.loss(onehot, logits, gamma=1.5)
    expected = {"sum_over_batch_size": (s * wl).mean(), "sum": (s * wl).sum(),
                "mean_with_sample_weight": (s * wl).sum() / s.sum(), None: s * wl}
    for reduction, value in expected.items():
        loss = tfimb.ClassBalancedFocal(0.99, COUNTS, gamma=1.5, normalization="num_classes",
                                        reduction=reduction)
        np.testing.assert_allclose(loss(labels, logits, sample_weight=s), value, rtol=1e-5,
                                   err_msg=str(reduction))


def test_weighted_mean_honours_keras_masks(rng):
    # Sequences of 5 steps; steps whose features are all zero are masked by keras.layers.Masking.
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    x[0, 3:] = 0.0
    x[2, 1:] = 0.0
    labels = rng.integers(0, C, size=(4, 5))
    inputs = keras.Input((5, 3))
    outputs = keras.layers.Dense(C)(keras.layers.Masking()(inputs))
    model = keras.Model(inputs, outputs)
    logits = np.asarray(model(x))
    keep = np.any(x != 0, axis=-1)
    w = reference.cb_weights(COUNTS, 0.999)[labels]
    ce = reference.loss(np.eye(C)[labels], logits)
    expected = (keep * w * ce).sum() / (keep * w).sum()
    model.compile(loss=tfimb.ClassBalancedSoftmax(0.999, COUNTS))
    np.testing.assert_allclose(model.evaluate(x, labels, verbose=0), expected, rtol=1e-5)
    # num_classes: Keras' own mask handling (mean over the unmasked steps).
    model.compile(loss=tfimb.ClassBalancedSoftmax(0.999, COUNTS, normalization="num_classes"))
    np.testing.assert_allclose(model.evaluate(x, labels, verbose=0),
                               (keep * w * ce).sum() / keep.sum(), rtol=1e-5)


# Published reference values (NumPy, float64) for the class-balanced losses.
REF_LOGITS = np.array([[2, 1, .1], [.5, 2.5, .3], [.1, .2, 3]], np.float32)
REF_LABELS = np.array([0, 1, 2])
REF_COUNTS = [100, 10, 1]


def test_published_reference_values():
    np.testing.assert_allclose(tfimb.class_balanced_weights([2, 3, 1, 2, 2], 0.9999),
                               [0.882363, 0.588272, 1.764638, 0.882363, 0.882363], atol=1e-6)
    np.testing.assert_allclose(tfimb.class_balanced_weights(REF_COUNTS, 0.999),
                               [0.028363, 0.271256, 2.700381], atol=1e-6)
    for normalization in ("num_classes", "weighted_mean"):  # One example per class: mean w = 1.
        cb = tfimb.ClassBalancedSoftmax(0.999, REF_COUNTS, normalization=normalization,
                                        reduction=None)
        np.testing.assert_allclose(cb(REF_LABELS, REF_LOGITS), [0.011828, 0.059690, 0.295966],
                                   atol=2e-6)
        cbf = tfimb.ClassBalancedFocal(0.999, REF_COUNTS, gamma=2.0,
                                       normalization=normalization, reduction=None)
        np.testing.assert_allclose(cbf(REF_LABELS, REF_LOGITS),
                                   [0.001375, 0.002329, 0.003189], atol=2e-6)
    np.testing.assert_allclose(
        tfimb.ClassBalancedSoftmax(0.999, REF_COUNTS, normalization="num_classes")(
            REF_LABELS, REF_LOGITS), 0.122495, atol=2e-6)
    np.testing.assert_allclose(
        tfimb.ClassBalancedFocal(0.999, REF_COUNTS, 2.0, normalization="num_classes")(
            REF_LABELS, REF_LOGITS), 0.002298, atol=2e-6)
    np.testing.assert_allclose(
        tfimb.LogitAdjusted(REF_COUNTS, tau=1.0, reduction=None)(REF_LABELS, REF_LOGITS),
        [0.037569, 0.860538, 1.961562], atol=2e-6)
    # The `focal-loss` package's docstring example (probabilities, gamma 2).
    probs = [[.8, .1, .1], [.2, .7, .1], [.2, .2, .6]]
    focal = tfimb.Focal(gamma=2.0, from_logits=False, reduction=None)
    np.testing.assert_allclose(focal([0, 1, 2], probs), [0.00893, 0.03210, 0.08173], atol=1e-5)
    np.testing.assert_allclose(tfimb.Focal(2.0, from_logits=False)([0, 1, 2], probs),
                               0.0409195, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Equivalences.


def _values(loss, labels, logits):
    return np.asarray(loss(labels, logits), np.float64)


@pytest.mark.parametrize("normalization", ["weighted_mean", "num_classes"])
def test_beta_zero_is_cross_entropy(rng, normalization):
    labels, _, logits = _data(rng)
    ce = _values(tfimb.SoftmaxCrossEntropy(), labels, logits)
    cb = _values(tfimb.ClassBalancedSoftmax(0.0, COUNTS, normalization=normalization),
                 labels, logits)
    np.testing.assert_allclose(cb, ce, rtol=1e-6)
    fl = _values(tfimb.Focal(1.5), labels, logits)
    cbf = _values(tfimb.ClassBalancedFocal(0.0, COUNTS, 1.5, normalization=normalization),
                  labels, logits)
    np.testing.assert_allclose(cbf, fl, rtol=1e-6)


@pytest.mark.parametrize("normalization", ["weighted_mean", "num_classes"])
def test_beta_to_one_is_inverse_class_frequency(rng, normalization):
    labels, _, logits = _data(rng)
    icf = _values(tfimb.InverseClassFrequency(COUNTS, normalization=normalization,
                                              reduction=None), labels, logits)
    cb = _values(tfimb.ClassBalancedSoftmax(1 - 1e-9, COUNTS, normalization=normalization,
                                            reduction=None), labels, logits)
    np.testing.assert_allclose(cb, icf, rtol=1e-5)


def test_gamma_zero_is_non_focal(rng):
    labels, _, logits = _data(rng)
    np.testing.assert_allclose(_values(tfimb.Focal(0.0), labels, logits),
                               _values(tfimb.SoftmaxCrossEntropy(), labels, logits), rtol=1e-7)
    np.testing.assert_allclose(
        _values(tfimb.ClassBalancedFocal(0.99, COUNTS, gamma=0.0), labels, logits),
        _values(tfimb.ClassBalancedSoftmax(0.99, COUNTS), labels, logits), rtol=1e-7)


def test_ldam_deferred_reweighting_switch(rng):
    labels, onehot, logits = _data(rng, ldam=True)
    loss = tfimb.LDAM(COUNTS)
    plain = reference.reference_for("ldam", {"counts": COUNTS, "max_margin": 0.5,
                                             "scale": 30.0}, onehot, logits).mean()
    weighted = reference.reference_for("ldam", {"counts": COUNTS, "max_margin": 0.5,
                                                "scale": 30.0, "beta": 0.9999},
                                       onehot, logits).mean()
    np.testing.assert_allclose(loss(labels, logits), plain, rtol=1e-5)
    loss.set_beta(0.9999)
    assert loss.get_config()["beta"] == 0.9999
    np.testing.assert_allclose(loss(labels, logits), weighted, rtol=1e-5)
    loss.set_beta(None)
    np.testing.assert_allclose(loss(labels, logits), plain, rtol=1e-5)
    with pytest.raises(ValueError, match="`beta`"):
        loss.set_beta(1.0)


def test_logit_adjusted_tau_one_is_balanced_softmax(rng):
    labels, _, logits = _data(rng)
    np.testing.assert_allclose(
        _values(tfimb.LogitAdjusted(COUNTS, tau=1.0, reduction=None), labels, logits),
        _values(tfimb.BalancedSoftmax(COUNTS, reduction=None), labels, logits), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_class_balanced_focal_equals_keras_categorical_focal(rng, gamma):
    labels, onehot, logits = _data(rng, spread=1.0)  # Keras clips p at 1e-7: stay away from it.
    weights = tfimb.class_balanced_weights(COUNTS, 0.999)
    keras_loss = keras.losses.CategoricalFocalCrossentropy(
        alpha=weights.tolist(), gamma=gamma, from_logits=True)
    ours = tfimb.ClassBalancedFocal(0.999, COUNTS, gamma, normalization="num_classes")
    np.testing.assert_allclose(ours(onehot, logits), keras_loss(onehot, logits), rtol=1e-5)
    np.testing.assert_allclose(ours(labels, logits), keras_loss(onehot, logits), rtol=1e-5)


def test_cross_entropies_match_keras(rng):
    labels, onehot, logits = _data(rng)
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ours = tfimb.SoftmaxCrossEntropy()
    np.testing.assert_allclose(ours(labels, logits), sparse(labels, logits), rtol=1e-6)
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    np.testing.assert_allclose(tfimb.SoftmaxCrossEntropy(label_smoothing=0.2)(labels, logits),
                               smoothed(onehot, logits), rtol=1e-6)
    # Class-balanced softmax under "num_classes" = CE with per-example weights w_y (Keras'
    # class_weight mechanism).
    weights = tfimb.class_balanced_weights(COUNTS, 0.99)
    np.testing.assert_allclose(
        tfimb.ClassBalancedSoftmax(0.99, COUNTS, normalization="num_classes")(labels, logits),
        sparse(labels, logits, sample_weight=weights[labels]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Numerical stability: finite values and gradients at the extremes, gradients vs brute force.

EXTREME_LOGITS = np.array([
    [1e4, -1e4, 0.0],      # p_0 = 1 exactly in float32, p_1 underflows.
    [1e4, -1e4, 0.0],
    [-1e4, 1e4, 1e4],      # Tie for the largest logit.
    [30.0, 0.0, 0.0],      # p_0 rounds to 1 in float32.
    [-200.0, 0.0, 0.0],    # p_0 = e^-200 underflows in float32.
    [0.0, 0.0, 0.0],
], np.float32)
EXTREME_LABELS = np.array([0, 1, 1, 0, 0, 2])
EXTREME_COUNTS = [1000, 10, 1]


def _extreme_cases(gamma):
    return [
        tfimb.SoftmaxCrossEntropy(label_smoothing=0.1),
        tfimb.Focal(gamma),
        tfimb.Focal(gamma, label_smoothing=0.1),
        tfimb.ClassBalancedFocal(0.9999, EXTREME_COUNTS, gamma),
        tfimb.ClassBalancedFocal(0.99, EXTREME_COUNTS, gamma, normalization="num_classes",
                                 label_smoothing=0.2),
        tfimb.ClassBalancedSoftmax(0.999, EXTREME_COUNTS),
        tfimb.InverseClassFrequency(EXTREME_COUNTS),
        tfimb.BalancedSoftmax(EXTREME_COUNTS),
        tfimb.LogitAdjusted(EXTREME_COUNTS, tau=2.0),
        tfimb.LDAM(EXTREME_COUNTS),
        tfimb.SigmoidCrossEntropy(),
        tfimb.SigmoidFocal(gamma, label_smoothing=0.1),
        tfimb.ClassBalancedSigmoid(0.999, EXTREME_COUNTS),
        tfimb.ClassBalancedSigmoidFocal(0.9999, EXTREME_COUNTS, gamma,
                                        normalization="num_classes"),
    ]


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_finite_values_and_gradients_at_extremes(gamma, compiled):
    for loss in _extreme_cases(gamma):
        def value_and_grad(logits, loss=loss):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                value = loss(EXTREME_LABELS, logits)
            return value, tape.gradient(value, logits)

        fn = tf.function(value_and_grad) if compiled else value_and_grad
        value, grad = fn(tf.constant(EXTREME_LOGITS))
        assert np.isfinite(value.numpy()), (loss.name, gamma)
        assert np.all(np.isfinite(grad.numpy())), (loss.name, gamma, grad.numpy())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_extreme_gradients_have_the_limit_values(gamma):
    # Target logit -1e4, another +1e4: p_y = 0, the modulator is 1, d loss / dz = p - onehot.
    logits = tf.constant([[-1e4, 1e4, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = tfimb.Focal(gamma)([0], logits)
    np.testing.assert_allclose(value, 2e4, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(value, logits), [[-1.0, 1.0, 0.0]], atol=1e-6)
    # Target logit +1e4: the loss and its gradient vanish.
    with tf.GradientTape() as tape:
        tape.watch(logits)
        value = tfimb.Focal(gamma)([1], logits)
    np.testing.assert_allclose(value, 0.0, atol=1e-30)
    np.testing.assert_allclose(tape.gradient(value, logits), 0.0, atol=1e-30)


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_gradient_matches_finite_differences(rng, name, kwargs):
    labels, onehot, logits = _data(rng, batch=4, spread=2.0, ldam=name == "ldam")
    kwargs = dict(kwargs, label_smoothing=0.05)
    loss = losses.get(name, dtype="float64", **kwargs)
    z = tf.constant(logits, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(z)
        value = loss(labels, z)
    analytic = tape.gradient(value, z).numpy()

    def mean_ref(x):
        return reference.reference_for(name, kwargs, onehot, x).mean()

    numeric = np.zeros_like(analytic)
    step = 1e-6
    base = logits.astype(np.float64)
    for index in np.ndindex(base.shape):
        up, down = base.copy(), base.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (mean_ref(up) - mean_ref(down)) / (2 * step)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Mixed precision: the loss computes in float32.


def test_mixed_precision_computes_in_float32(rng, mixed_policy):
    labels, _, logits = _data(rng)
    expected = tfimb.ClassBalancedFocal(0.99, COUNTS)(labels, logits)
    for policy in ("mixed_bfloat16", "mixed_float16"):
        mixed_policy(policy)
        loss = tfimb.ClassBalancedFocal(0.99, COUNTS)
        assert loss.dtype == "float32"
        half = keras.ops.cast(logits, policy.split("_")[1])
        value = loss(labels, half)
        assert value.dtype == tf.float32
        # Only the rounding of the logits to 16 bits differs.
        np.testing.assert_allclose(value, expected, rtol=3e-2)
        fn_value = losses.class_balanced_focal(labels, half, 0.99, COUNTS)
        assert fn_value.dtype == tf.float32
    assert tfimb.Focal(dtype="bfloat16").dtype == "float32"
    assert tfimb.Focal(dtype="float64").dtype == "float64"


def test_mixed_precision_model_trains_with_float32_loss(rng, mixed_policy):
    mixed_policy("mixed_bfloat16")
    inputs = keras.Input((8,))
    logits = keras.layers.Dense(C)(inputs)  # bfloat16 logits
    model = keras.Model(inputs, logits)
    assert model.output.dtype == "bfloat16"
    model.compile(optimizer="sgd", loss=tfimb.ClassBalancedFocal(0.999, COUNTS, gamma=0.5))
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, C, size=64)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


# ---------------------------------------------------------------------------------------------
# Labels.


def test_out_of_range_labels_raise_eagerly(rng):
    _, _, logits = _data(rng, batch=3)
    for bad in ([0, 1, C], [0, -1, 2], [0.5, 1, 2]):
        with pytest.raises(ValueError, match=r"`y_true`.*\[0, 5\)"):
            tfimb.ClassBalancedFocal(0.9, COUNTS)(bad, logits)


def test_out_of_range_labels_give_nan_inside_graphs(rng):
    _, _, logits = _data(rng, batch=5)
    loss = tfimb.ClassBalancedSoftmax(0.9, COUNTS, normalization="num_classes", reduction=None)
    values = tf.function(loss)(tf.constant([0, C, 2, -1, 1]), tf.constant(logits)).numpy()
    np.testing.assert_array_equal(np.isnan(values), [False, True, False, True, False])
    values = tf.function(loss)(tf.constant([0.0, 2.7, -0.5, 1.0, 4.0]),
                               tf.constant(logits)).numpy()
    np.testing.assert_array_equal(np.isnan(values), [False, True, True, False, False])


def test_dense_labels_must_be_distributions(rng):
    _, onehot, logits = _data(rng, batch=3)
    with pytest.raises(ValueError, match="`y_true`"):
        tfimb.Focal()(onehot * 2, logits)


def test_soft_labels_weight_by_label_mass(rng):
    _, _, logits = _data(rng, batch=2)
    soft = np.array([[0.5, 0.5, 0, 0, 0], [0, 0, 0.25, 0.75, 0]])
    w = reference.cb_weights(COUNTS, 0.99)
    expected = reference.loss(soft, logits, weights=w, normalization="num_classes")
    np.testing.assert_allclose(
        tfimb.ClassBalancedSoftmax(0.99, COUNTS, normalization="num_classes",
                                   reduction=None)(soft, logits), expected, rtol=1e-5)


def test_label_shape_mismatch_is_an_error(rng):
    _, _, logits = _data(rng, batch=3)
    with pytest.raises(ValueError, match="y_true.shape"):
        tfimb.SoftmaxCrossEntropy()(np.zeros((3, 2, 2)), logits)


# ---------------------------------------------------------------------------------------------
# Validation: one test per rule, each checking argument, value and valid range in the message.


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("cls", [tfimb.InverseClassFrequency, tfimb.BalancedSoftmax,
                                 tfimb.LogitAdjusted, tfimb.LDAM])
def test_counts_rules(cls):
    _raises(r"`counts`.*1-D.*shape \(2, 2\)", cls, [[1, 2], [3, 4]])
    _raises(r"`counts`.*at least two classes.*counts=\[\]", cls, [])
    _raises(r"`counts`.*at least two classes", cls, [10])
    _raises(r"`counts`.*finite.*\[1\]", cls, [10, float("nan"), 3])
    _raises(r"`counts`.*finite", cls, [10, float("inf")])
    _raises(r"`counts`.*> 0.*\[1\].*drop it", cls, [10, 0, 3])
    _raises(r"`counts`.*> 0.*\[2\]", cls, [10, 5, -3])
    _raises(r"`counts`", cls, ["a", "b"])


def test_beta_rule():
    for beta in (1.0, -0.1, 1.5, float("nan")):
        _raises(rf"`beta`. Expected 0.0 <= beta < 1.0. Received: beta={beta}",
                tfimb.ClassBalancedSoftmax, beta, COUNTS)
        _raises(r"`beta`", tfimb.ClassBalancedFocal, beta, COUNTS)
        _raises(r"`beta`", tfimb.effective_number, COUNTS, beta)


def test_gamma_rule():
    _raises(r"`gamma`. Expected 0.0 <= gamma \(finite\). Received: gamma=-0.5",
            tfimb.Focal, -0.5)
    _raises(r"`gamma`.*gamma=-1", tfimb.ClassBalancedFocal, 0.9, COUNTS, -1)
    _raises(r"`gamma`.*inf", tfimb.Focal, float("inf"))


def test_tau_rule():
    _raises(r"`tau`. Expected 0.0 <= tau \(finite\). Received: tau=-1.0",
            tfimb.LogitAdjusted, COUNTS, tau=-1.0)


def test_label_smoothing_rule():
    for value in (1.0, -0.1):
        _raises(rf"`label_smoothing`. Expected 0.0 <= label_smoothing < 1.0. Received: "
                rf"label_smoothing={value}", tfimb.SoftmaxCrossEntropy, label_smoothing=value)


def test_margin_and_scale_rules():
    _raises(r"`max_margin`.*max_margin=-0.1", tfimb.LDAM, COUNTS, max_margin=-0.1)
    _raises(r"`scale`. Expected 0.0 < scale.*scale=0", tfimb.LDAM, COUNTS, scale=0)


def test_normalization_rule():
    _raises(r"`normalization`.*'weighted_mean', 'num_classes'.*normalization='mean'",
            tfimb.ClassBalancedSoftmax, 0.9, COUNTS, normalization="mean")


def test_logits_width_must_match_counts(rng):
    _, _, logits = _data(rng, batch=3)
    for loss in (tfimb.ClassBalancedFocal(0.9, [10, 20, 30]), tfimb.LDAM([10, 20, 30]),
                 tfimb.BalancedSoftmax([10, 20, 30])):
        _raises(r"`y_pred`. Expected logits for 3 classes.*\(3, 5\)", loss, [0, 1, 2], logits)
    _raises(r"`y_pred`.*at least two classes", tfimb.Focal(), [0, 0], [[1.0], [2.0]])


def test_reduction_rule():
    _raises(r"`reduction`", tfimb.Focal, reduction="average")


# ---------------------------------------------------------------------------------------------
# Registry, serialization, catalogue.


def test_catalog_lists_exactly_the_loss_classes():
    assert [e.name for e in catalog.LOSSES] == list(losses.LOSSES)
    for entry in catalog.LOSSES:
        cls = losses.LOSSES[entry.name]
        params = inspect.signature(cls).parameters
        assert entry.required == tuple(k for k, p in params.items()
                                       if p.default is inspect.Parameter.empty)
        assert entry.options + catalog.COMMON_OPTIONS == tuple(
            k for k, p in params.items() if p.default is not inspect.Parameter.empty
            and k not in ("name", "reduction", "dtype"))
        assert entry.weighted == ("normalization" in params and "beta" in entry.required
                                  or entry.name == "inverse_class_frequency")
        function = inspect.signature(getattr(losses, entry.name)).parameters
        assert list(function)[2:] == [k for k in params if k not in ("name", "reduction", "dtype")]
        assert cls.__name__ == entry.class_name
        assert getattr(tfimb, entry.class_name) is cls
        assert inspect.signature(cls).parameters["name"].default == entry.name
    _raises(r"`name`.*one of", losses.get, "cross_entropy")


@pytest.mark.parametrize("name,kwargs", CASES, ids=CASE_IDS)
def test_serialize_round_trip(rng, name, kwargs):
    loss = losses.get(name, label_smoothing=0.05, **kwargs)
    config = keras.losses.serialize(loss)
    assert config["registered_name"].startswith("tfimb>")
    restored = keras.losses.deserialize(config)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    labels, _, logits = _data(rng, ldam=name == "ldam")
    np.testing.assert_allclose(restored(labels, logits), loss(labels, logits), rtol=1e-7)


# One case per loss (the first of each name).
ONE_PER_LOSS = [CASES.index(next(c for c in CASES if c[0] == name)) for name in losses.LOSSES]


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", [CASES[i] for i in ONE_PER_LOSS],
                         ids=[CASE_IDS[i] for i in ONE_PER_LOSS])
def test_keras_file_round_trip_of_compiled_model(tmp_path, rng, name, kwargs):
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.integers(0, C, size=64)
    inputs = keras.Input((6,))
    if name == "ldam":
        outputs = tfimb.models.CosineClassifier(C)(inputs)
    else:
        outputs = keras.layers.Dense(C)(inputs)
    model = keras.Model(inputs, outputs)
    metrics = (tfimb.metrics.group_accuracies(minority=[3, 4], num_classes=C)
               + tfimb.metrics.shot_accuracies(COUNTS))
    model.compile(optimizer="sgd", loss=losses.get(name, **kwargs), metrics=metrics)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode=True
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.get_config() == model.loss.get_config()
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert set(after) == {"loss", "minority_accuracy", "majority_accuracy", "all_accuracy",
                          "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy"}
    for key, value in before.items():
        np.testing.assert_allclose(after[key], value, rtol=1e-6, err_msg=key)


# ---------------------------------------------------------------------------------------------
# Sigmoid losses: multi-label targets and Keras' own binary losses.

SIGMOID_LOSSES = ["sigmoid_cross_entropy", "sigmoid_focal", "class_balanced_sigmoid",
                  "class_balanced_sigmoid_focal"]


def _multi_hot(rng, batch=16):
    targets = (rng.random((batch, C)) < 0.3).astype(np.float32)
    targets[np.arange(batch), rng.integers(0, C, batch)] = 1.0  # At least one positive each.
    return targets


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("normalization", ["weighted_mean", "num_classes"])
def test_multi_hot_targets_match_numpy_reference(rng, compiled, normalization):
    targets = _multi_hot(rng)
    logits = rng.normal(scale=3.0, size=targets.shape).astype(np.float32)
    counts = tfimb.class_counts(targets, C, multi_label=True)
    weights = reference.cb_weights(counts, 0.999)
    loss = tfimb.ClassBalancedSigmoidFocal(0.999, counts, gamma=2.0,
                                           normalization=normalization)
    fn = tf.function(lambda y, z: loss(y, z)) if compiled else loss
    expected = reference.sigmoid_loss(targets, logits, gamma=2.0, weights=weights,
                                      normalization=normalization)
    np.testing.assert_allclose(fn(tf.constant(targets), tf.constant(logits)), expected.mean(),
                               rtol=2e-5)
    per_example = tfimb.SigmoidCrossEntropy(reduction=None)(targets, logits)
    np.testing.assert_allclose(per_example, reference.sigmoid_loss(targets, logits), rtol=2e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_losses_are_keras_binary_losses_summed_over_classes(rng, gamma):
    # Keras averages its binary losses over the class axis; tfimb sums (Cui et al.).
    targets = _multi_hot(rng)
    logits = rng.normal(scale=3.0, size=targets.shape).astype(np.float32)
    if gamma:
        keras_loss = keras.losses.BinaryFocalCrossentropy(gamma=gamma, from_logits=True,
                                                          reduction=None)
    else:
        keras_loss = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)
    np.testing.assert_allclose(tfimb.SigmoidFocal(gamma, reduction=None)(targets, logits),
                               C * np.asarray(keras_loss(targets, logits)), rtol=1e-4)
    # With hard labels the modulator is (1 - p_t)^gamma.
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    p_t = np.where(targets == 1, p, 1 - p)
    bce = -np.log(p_t)
    np.testing.assert_allclose(tfimb.SigmoidFocal(gamma, reduction=None)(targets, logits),
                               ((1 - p_t) ** gamma * bce).sum(-1), rtol=2e-5)


def test_sigmoid_class_balanced_paper_setting_beta_zero_and_gamma_zero(rng):
    labels, _, logits = _data(rng)
    for normalization in ("weighted_mean", "num_classes"):
        np.testing.assert_allclose(
            tfimb.ClassBalancedSigmoidFocal(0.0, COUNTS, 1.5, normalization=normalization)(
                labels, logits), tfimb.SigmoidFocal(1.5)(labels, logits), rtol=1e-6)
    np.testing.assert_allclose(
        tfimb.ClassBalancedSigmoidFocal(0.999, COUNTS, 0.0)(labels, logits),
        tfimb.ClassBalancedSigmoid(0.999, COUNTS)(labels, logits), rtol=1e-6)


def test_sigmoid_targets_and_counts_rules(rng):
    logits = rng.normal(size=(2, C)).astype(np.float32)
    _raises(r"`y_true`.*\[0, 1\].*2", tfimb.SigmoidCrossEntropy(), [[2, 0, 0, 0, 0],
                                                                    [0, 1, 0, 0, 0]], logits)
    _raises(r"`y_true`.*\[0, 5\)", tfimb.SigmoidFocal(), [0, 7], logits)
    assert tfimb.class_counts([[1, 1, 0], [0, 1, 0]], 3, multi_label=True).tolist() == [1, 2, 0]
    _raises(r"`labels`.*0 and 1", tfimb.class_counts, [[1, 0.5, 0]], 3, multi_label=True)
    _raises(r"`labels`.*\(N, 3\)", tfimb.class_counts, [0, 1, 2], 3, multi_label=True)
    # One logit per example: binary classification with a (batch, 1) 0/1 target.
    value = tfimb.SigmoidCrossEntropy()([[1.0], [0.0]], [[2.0], [-1.0]])
    np.testing.assert_allclose(value, np.mean([np.logaddexp(0, -2.0), np.logaddexp(0, -1.0)]),
                               rtol=1e-6)


def test_train_starts_sigmoid_logits_at_the_class_prior():
    from tfimb import config, data
    from tfimb.experiments import classify

    cfg = config.resolve({"data": {"source": "digits"}, "imbalance": None,
                          "model": {"name": "resnet8"},
                          "loss": {"name": "class_balanced_sigmoid_focal", "beta": 0.999}})
    images = np.zeros((10, 8, 8, 1), np.uint8)
    split = data.Split(images, np.arange(10))
    dataset = data.Dataset(split, data.Split(images[:0], split.labels[:0]), split,
                           [str(i) for i in range(10)], 10)
    model = classify.build_model(cfg, dataset)
    bias = [w for w in model.weights if "logits" in w.path and w.path.endswith("bias")]
    np.testing.assert_allclose(bias[0].numpy(), -np.log(9.0) * np.ones(10), rtol=1e-6)


@pytest.mark.parametrize("name,kwargs", [CASES[i] for i in ONE_PER_LOSS],
                         ids=[CASE_IDS[i] for i in ONE_PER_LOSS])
def test_keras_input_conventions(rng, name, kwargs):
    labels, _, logits = _data(rng, batch=6, ldam=name == "ldam")
    loss = losses.get(name, **kwargs)
    # Any tensor-like y_pred, variables included, as Keras' own losses accept.
    np.testing.assert_allclose(loss(labels, tf.Variable(logits)), loss(labels, logits),
                               rtol=1e-6)
    # A label batch that differs from the logits batch names both shapes.
    _raises(r"y_true.shape=\(5,\), y_pred.shape=\(6, 5\)", loss, labels[:5], logits)
    if "counts" in kwargs:  # Counts of examples are whole numbers.
        counts = [c + 0.5 for c in kwargs["counts"]]
        _raises(r"`counts`.*whole numbers", losses.get, name, **{**kwargs, "counts": counts})
