"""tfimb.posthoc: post-hoc logit adjustment (Menon et al., ICLR 2021), and the `posthoc`
section of results.json, whose tau is chosen on the validation split and never on the test
split."""

import json

import numpy as np
import pytest
import tensorflow as tf

import keras

import tfimb
from tfimb import config, data
from tfimb import posthoc
from tfimb.experiments import classify

COUNTS = [500, 50, 5]


def _numpy_adjusted(logits, counts, tau):
    counts = np.asarray(counts, np.float64)
    return np.asarray(logits, np.float64) - tau * np.log(counts / counts.sum())


def test_the_module_is_exposed_like_the_others():
    assert tfimb.posthoc is posthoc and "posthoc" in tfimb.__all__


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.7])
def test_adjust_logits_matches_numpy_eagerly_and_in_tf_function(rng, tau):
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    expected = _numpy_adjusted(logits, COUNTS, tau)
    eager = keras.ops.convert_to_numpy(posthoc.adjust_logits(logits, COUNTS, tau))
    np.testing.assert_allclose(eager, expected, rtol=1e-6, atol=1e-6)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def graph(z):  # Symbolic logits: what an exported signature passes.
        return posthoc.adjust_logits(z, COUNTS, tau)

    np.testing.assert_allclose(graph(tf.constant(logits)).numpy(), expected, rtol=1e-6,
                               atol=1e-6)
    assert np.array_equal(eager.argmax(-1), expected.argmax(-1))
    # Mixed-precision logits keep their dtype; integer ones become float32.
    assert posthoc.adjust_logits(logits.astype(np.float16), COUNTS, tau).dtype == tf.float16
    assert posthoc.adjust_logits([[1, 2, 3]], COUNTS, tau).dtype == tf.float32
    if tau == 0.0:
        np.testing.assert_array_equal(eager, logits)


def test_counts_and_tau_are_checked_in_one_line_naming_the_argument():
    logits = np.zeros((2, 3), np.float32)
    for counts, needle in (([500, 0, 5], "Classes [1]"), (np.array([3, -1, 2]), "Classes [1]"),
                           ([7], "at least two classes")):
        with pytest.raises(ValueError, match="argument `counts`") as info:
            posthoc.adjust_logits(logits, counts)
        assert needle in str(info.value) and "\n" not in str(info.value)
    for tau in (-0.5, float("nan"), float("inf"), "x", True):
        with pytest.raises(ValueError, match=r"argument `tau`.*Received: tau=") as info:
            posthoc.adjust_logits(logits, COUNTS, tau)
        assert "\n" not in str(info.value)
    labels = np.array([0, 1])
    for taus in ([], [0.5, -1.0], [float("nan")], 3.0):
        with pytest.raises(ValueError, match="argument `taus`"):
            posthoc.choose_tau(logits, labels, COUNTS, taus)
    with pytest.raises(ValueError, match="argument `labels`"):
        posthoc.choose_tau(logits, np.array([0, 3]), COUNTS)
    with pytest.raises(ValueError, match="argument `logits`"):
        posthoc.choose_tau(np.zeros((2, 4)), labels, COUNTS)


def _bayes_logits(rng, per_class):
    """A problem where the right tau is known: 1-D Gaussian classes x ~ N(mu_y, 1) and the
    log-posterior under the training prior pi, `z_c = -(x - mu_c)^2 / 2 + log pi_c` (a
    perfectly fitted plain cross-entropy model). The balanced-error Bayes rule is
    `argmax(z - log pi)`: tau = 1."""
    mu = np.array([0.0, 1.5, 3.0])
    pi = np.asarray(COUNTS, np.float64) / np.sum(COUNTS)
    labels = np.repeat(np.arange(3), per_class)
    x = rng.normal(mu[labels], 1.0)
    return -0.5 * (x[:, None] - mu[None, :]) ** 2 + np.log(pi), labels


def test_choose_tau_picks_the_tau_that_balances_a_long_tail(rng):
    validation, labels = _bayes_logits(rng, 400)
    original = validation.copy()
    tau, by_tau = posthoc.choose_tau(validation, labels, COUNTS)
    np.testing.assert_array_equal(validation, original)  # Its inputs are left alone.
    assert list(by_tau) == list(posthoc.DEFAULT_TAUS) == [0.25 * i for i in range(13)]
    for t, accuracy in by_tau.items():  # Balanced accuracy, recomputed in NumPy.
        predicted = _numpy_adjusted(validation, COUNTS, t).argmax(-1)
        recall = [np.mean(predicted[labels == c] == c) for c in range(3)]
        assert accuracy == pytest.approx(np.mean(recall))
    assert by_tau[tau] == max(by_tau.values())
    assert 0.5 <= tau <= 1.5  # The Bayes tau is 1; a finite split lands near it.
    assert by_tau[tau] > by_tau[0.0] + 0.1  # Adjusting helps the rare classes a lot.
    # The tau chosen on validation helps on an independent (test) split too.
    test, test_labels = _bayes_logits(rng, 400)
    before = posthoc.balanced_accuracy(test_labels, test.argmax(-1), 3)
    after = posthoc.balanced_accuracy(
        test_labels, _numpy_adjusted(test, COUNTS, tau).argmax(-1), 3)
    assert after > before + 0.1

    # It reads only what it is given: the same examples in another order, the same answer.
    order = rng.permutation(len(labels))
    assert posthoc.choose_tau(validation[order], labels[order], COUNTS) == (tau, by_tau)


def test_ties_go_to_the_tau_closest_to_one_then_the_smaller():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    labels = np.arange(3)
    # Uniform counts: every tau predicts alike, so all tie and the default wins.
    tau, by_tau = posthoc.choose_tau(logits, labels, [10, 10, 10])
    assert tau == 1.0 and set(by_tau.values()) == {1.0}
    assert posthoc.choose_tau(logits, labels, [10, 10, 10], [0.5, 1.5])[0] == 0.5
    assert posthoc.choose_tau(logits, labels, [10, 10, 10], [3.0, 0.0, 2.0])[0] == 0.0


# ---------------------------------------------------------------------------------------------
# results.json's `posthoc`.

TINY = ["data.source=digits", "data.augment=false", "imbalance.majority_count=30",
        "imbalance.minority_count=5", "model.name=resnet8", "train.batch_size=32",
        "train.epochs=1", "train.lr_boundaries=[]", "train.lr_values=[0.1]",
        "mixed_precision=float32"]


def _spy(monkeypatch):
    calls = []
    real = posthoc.choose_tau

    def choose_tau(logits, labels, counts, taus=None):
        calls.append((np.array(logits), np.array(labels), np.array(counts)))
        return real(logits, labels, counts, taus)

    monkeypatch.setattr(posthoc, "choose_tau", choose_tau)
    return calls


@pytest.mark.slow
def test_a_run_chooses_tau_on_its_validation_split_only(tmp_path, monkeypatch):
    cfg = config.resolve({}, TINY + ["data.validation_per_class=10"])
    calls = _spy(monkeypatch)
    results = classify.run(cfg, tmp_path / "run", verbose=0)
    dataset = data.load(cfg.data, cfg.imbalance)
    assert len(dataset.validation) == 100
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["posthoc"]
    section = results["posthoc"]
    assert saved == json.loads(json.dumps(section))

    # choose_tau saw the validation split, once, and never a test label.
    [(logits, labels, counts)] = calls
    np.testing.assert_array_equal(labels, dataset.validation.labels)
    np.testing.assert_array_equal(counts, dataset.counts)
    assert logits.shape == (100, 10)
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    np.testing.assert_allclose(
        logits, model.predict(dataset.validation.images.astype(np.float32), verbose=0),
        rtol=1e-4, atol=1e-4)
    tau, by_tau = posthoc.choose_tau(logits, labels, dataset.counts)
    assert (section["tau"], section["chosen_on"]) == (tau, "validation")
    assert section["validation_accuracy_by_tau"] == {str(t): a for t, a in by_tau.items()}
    assert section["pi"] == pytest.approx((dataset.counts / dataset.counts.sum()).tolist())

    # Its accuracies are those of argmax(z - tau log pi) on the test split.
    test = model.predict(dataset.test.images.astype(np.float32), verbose=0)
    predicted = _numpy_adjusted(test, dataset.counts, tau).argmax(-1)
    assert section["accuracy"]["all"] == pytest.approx(np.mean(predicted == dataset.test.labels))
    minority = results["minority_classes"]
    in_minority = np.isin(dataset.test.labels, minority)
    assert section["accuracy"]["minority"] == pytest.approx(
        np.mean(predicted[in_minority] == dataset.test.labels[in_minority]))
    assert len(section["per_class_accuracy"]) == 10


def test_without_a_validation_split_tau_is_one_and_chosen_on_nothing(monkeypatch):
    """Menon et al.'s default, tau = 1; choose_tau is not called (never on the test split).
    Also for a sigmoid loss, whose logits are adjusted the same way."""
    calls = _spy(monkeypatch)
    for loss in ("softmax_cross_entropy", "sigmoid_focal"):
        cfg = config.resolve({}, TINY + [f"loss.name={loss}"])
        dataset = data.load(cfg.data, cfg.imbalance)
        assert len(dataset.validation) == 0
        minority = classify.minority_classes(cfg, dataset.counts)
        experiment = classify.ClassifierExperiment(dataset, minority)
        experiment.build(cfg)
        section = experiment.results(cfg, [], None)["posthoc"]
        assert section["tau"] == 1.0 and section["chosen_on"] is None
        assert section["validation_accuracy_by_tau"] is None
        test = classify.predict(experiment.model, data.pipeline(dataset.test, 512,
                                                                training=False))
        predicted = _numpy_adjusted(test, dataset.counts, 1.0).argmax(-1)
        assert section["accuracy"]["all"] == pytest.approx(
            np.mean(predicted == dataset.test.labels))
    assert calls == []


def test_posthoc_adjustment_scales_ldam_logits_and_never_reads_the_test_split_for_tau():
    rng = np.random.default_rng(1)
    validation, labels = _bayes_logits(rng, 50)
    test, test_labels = _bayes_logits(rng, 50)
    section = classify.posthoc_adjustment(test / 30, test_labels, COUNTS, [1, 2],
                                          (validation / 30, labels), scale=30.0)
    tau, by_tau = posthoc.choose_tau(validation, labels, COUNTS)
    assert section["tau"] == tau and section["chosen_on"] == "validation"
    # Another test split leaves tau alone.
    other = classify.posthoc_adjustment(-test / 30, test_labels, COUNTS, [1, 2],
                                        (validation / 30, labels), scale=30.0)
    assert other["tau"] == tau
    predicted = _numpy_adjusted(test, COUNTS, tau).argmax(-1)
    assert section["accuracy"]["all"] == pytest.approx(np.mean(predicted == test_labels))
    assert section["accuracy"]["majority"] == pytest.approx(
        np.mean(predicted[test_labels == 0] == 0))
