import numpy as np
import pytest

import keras
import tensorflow as tf

import tfimb
from tfimb import metrics

C = 6


def _batch(rng, n=50):
    labels = rng.integers(0, C, size=n)
    scores = rng.normal(size=(n, C)).astype(np.float32)
    scores[np.arange(n), labels] += rng.normal(1.0, 1.0, size=n)  # Right about half the time.
    return labels, scores


def _numpy_group_accuracy(labels, scores, classes, weights=None):
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    member = np.isin(labels, classes) * weights
    correct = scores.argmax(-1) == labels
    return (member * correct).sum() / member.sum()


def test_group_accuracy_matches_numpy_across_batches(rng):
    (l1, s1), (l2, s2) = _batch(rng), _batch(rng)
    metric = metrics.GroupAccuracy([1, 4], name="g")
    metric.update_state(l1, s1)
    metric.update_state(np.eye(C)[l2], s2)  # One-hot labels in the second batch.
    expected = _numpy_group_accuracy(np.concatenate([l1, l2]), np.concatenate([s1, s2]), [1, 4])
    np.testing.assert_allclose(metric.result(), expected, rtol=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_group_accuracy_honours_sample_weight(rng):
    labels, scores = _batch(rng)
    weights = rng.uniform(size=labels.shape)
    metric = metrics.GroupAccuracy([0, 2, 3])
    metric.update_state(labels[:, None], scores, sample_weight=weights[:, None])
    np.testing.assert_allclose(metric.result(),
                               _numpy_group_accuracy(labels, scores, [0, 2, 3], weights),
                               rtol=1e-6)


def test_group_accuracy_inside_tf_function(rng):
    labels, scores = _batch(rng)
    metric = metrics.GroupAccuracy([5])

    @tf.function
    def update(y, s):
        metric.update_state(y, s)

    update(tf.constant(labels), tf.constant(scores))
    np.testing.assert_allclose(metric.result(), _numpy_group_accuracy(labels, scores, [5]),
                               rtol=1e-6)


def test_group_accuracies_in_evaluate(rng):
    labels, _ = _batch(rng, n=200)
    x = np.eye(C)[labels].astype(np.float32) + rng.normal(scale=0.8, size=(200, C))
    inputs = keras.Input((C,))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=tfimb.SoftmaxCrossEntropy(),
                  metrics=metrics.group_accuracies(minority=[1, 4], num_classes=C))
    result = model.evaluate(x, labels, batch_size=32, verbose=0, return_dict=True)
    for name, group in [("minority_accuracy", [1, 4]), ("majority_accuracy", [0, 2, 3, 5]),
                        ("all_accuracy", list(range(C)))]:
        np.testing.assert_allclose(result[name], _numpy_group_accuracy(labels, x, group),
                                   rtol=1e-6, err_msg=name)


def test_group_accuracies_names_and_groups():
    minority, majority, everything = metrics.group_accuracies([1, 4, 6], num_classes=10)
    assert [m.name for m in (minority, majority, everything)] == [
        "minority_accuracy", "majority_accuracy", "all_accuracy"]
    assert minority.classes == [1, 4, 6]
    assert majority.classes == [0, 2, 3, 5, 7, 8, 9]
    assert everything.classes == list(range(10))


def test_shot_groups_and_metrics():
    counts = [5000, 101, 100, 20, 19, 1]
    assert metrics.shot_groups(counts) == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    names = [m.name for m in metrics.shot_accuracies(counts)]
    assert names == ["many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy"]
    # CIFAR-10-LT at imbalance 100 (5000 ... 50) has no few-shot class: no metric for it.
    lt = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert [m.name for m in metrics.shot_accuracies(lt)] == [
        "many_shot_accuracy", "medium_shot_accuracy"]


def test_metric_serialization_round_trip(rng):
    metric = metrics.GroupAccuracy([2, 3], name="minority_accuracy")
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(restored) is metrics.GroupAccuracy
    assert restored.get_config() == metric.get_config()
    labels, scores = _batch(rng)
    restored.update_state(labels, scores)
    metric.update_state(labels, scores)
    assert float(restored.result()) == float(metric.result())


def test_confusion_matrix_and_per_class_accuracy(rng):
    labels, scores = _batch(rng, n=300)
    predicted = scores.argmax(-1)
    brute = np.zeros((C, C), np.int64)
    for t, p in zip(labels, predicted):
        brute[t, p] += 1
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, scores, C), brute)
    np.testing.assert_array_equal(metrics.confusion_matrix(np.eye(C)[labels], predicted, C),
                                  brute)
    expected = [(predicted[labels == c] == c).mean() for c in range(C)]
    np.testing.assert_allclose(metrics.per_class_accuracy(labels, scores, C), expected)
    # A class with no evaluation example has no accuracy (NaN), not 0.
    acc = metrics.per_class_accuracy([0, 0, 1], [0, 1, 1], 3)
    np.testing.assert_allclose(acc[:2], [0.5, 1.0])
    assert np.isnan(acc[2])


def test_validation():
    with pytest.raises(ValueError, match=r"`classes`.*distinct"):
        metrics.GroupAccuracy([1, 1])
    with pytest.raises(ValueError, match=r"`classes`.*at least one"):
        metrics.GroupAccuracy([])
    with pytest.raises(ValueError, match=r"`classes`.*0 <= id"):
        metrics.GroupAccuracy([-1])
    with pytest.raises(ValueError, match=r"`minority`.*< num_classes=10.*\[1, 10\]"):
        metrics.group_accuracies([1, 10], num_classes=10)
    with pytest.raises(ValueError, match=r"`minority`.*proper subset"):
        metrics.group_accuracies([0, 1], num_classes=2)
    with pytest.raises(ValueError, match=r"`num_classes`.*>= 2.*num_classes=1"):
        metrics.group_accuracies([0], num_classes=1)
    with pytest.raises(ValueError, match=r"`classes`.*below the number of classes"):
        metrics.GroupAccuracy([7]).update_state([0], [[0.0] * C])
    with pytest.raises(ValueError, match=r"`y_true`.*class ids in \[0, 3\)"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match=r"`counts`"):
        metrics.shot_accuracies([10, 0])


# ---------------------------------------------------------------------------------------------
# Calibration: ECE, the reliability bins and NLL against a brute-force reference.


def _brute_calibration(labels, scores, bins, from_logits):
    """Per-example Python loops: (count, mean confidence, accuracy) per bin, ECE and NLL."""
    import math

    count, confidence, correct, nll = [0] * bins, [0.0] * bins, [0] * bins, 0.0
    for label, row in zip(labels, scores):
        row = [float(v) for v in row]
        top = row.index(max(row))  # The first maximum, as argmax.
        if from_logits:
            shift = max(row)
            total = sum(math.exp(v - shift) for v in row)
            c = math.exp(row[top] - shift) / total
            nll += shift + math.log(total) - row[label]
        else:
            c = row[top]
        b = next(k for k in range(bins)
                 if k / bins <= c < (k + 1) / bins or (k == bins - 1 and c == 1.0))
        count[b] += 1
        confidence[b] += c
        correct[b] += top == label
    n = len(labels)
    mean_conf = [s / k if k else np.nan for s, k in zip(confidence, count)]
    accuracy = [s / k if k else np.nan for s, k in zip(correct, count)]
    ece = sum(k / n * abs(a - m) for k, a, m in zip(count, accuracy, mean_conf) if k)
    return count, mean_conf, accuracy, ece, nll / n


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("bins", [15, 1, 7])
def test_ece_reliability_and_nll_match_brute_force(rng, bins):
    labels = rng.integers(0, C, size=400)
    logits = rng.normal(scale=2.0, size=(400, C))
    logits[np.arange(400), labels] += rng.normal(1.0, 1.5, size=400)
    count, conf, acc, ece, nll = _brute_calibration(labels, logits, bins, from_logits=True)
    for y in (labels, np.eye(C)[labels], labels[:, None]):  # Sparse, one-hot, (N, 1) labels.
        np.testing.assert_allclose(metrics.expected_calibration_error(y, logits, bins), ece,
                                   rtol=1e-10)
        diagram = metrics.reliability(y, logits, bins)
        np.testing.assert_array_equal(diagram["count"], count)
        np.testing.assert_allclose(diagram["confidence"], conf, rtol=1e-10)
        np.testing.assert_allclose(diagram["accuracy"], acc, rtol=1e-10)
        np.testing.assert_allclose(metrics.negative_log_likelihood(y, logits), nll, rtol=1e-10)
    probabilities = _softmax(logits)
    np.testing.assert_allclose(
        metrics.expected_calibration_error(labels, probabilities, bins, from_logits=False),
        _brute_calibration(labels, probabilities, bins, from_logits=False)[3], rtol=1e-10)
    assert 0.0 < ece < 1.0


def test_ece_bins_confidences_on_the_edges_0_and_1():
    # One-vs-all scores (rows need not sum to 1) whose top score is exactly b / 15, b = 0..15.
    top = np.arange(16) / 15
    assert top[0] == 0.0 and top[-1] == 1.0
    scores = np.zeros((16, 3))
    scores[:, 1] = top
    labels = np.where(np.arange(16) % 2 == 0, 1, 2)  # Even rows right, odd rows wrong.
    diagram = metrics.reliability(labels, scores, from_logits=False)
    # b / 15 opens bin b; 1.0 closes the last bin; 0 (argmax 0: wrong for every label) the first.
    np.testing.assert_array_equal(diagram["count"], [1] * 14 + [2])
    count, conf, acc, ece, _ = _brute_calibration(labels, scores, 15, from_logits=False)
    np.testing.assert_array_equal(diagram["count"], count)
    np.testing.assert_allclose(diagram["confidence"], conf, rtol=1e-12)
    np.testing.assert_allclose(diagram["accuracy"], acc, rtol=1e-12)
    np.testing.assert_allclose(metrics.expected_calibration_error(labels, scores,
                                                                 from_logits=False), ece)
    # The Keras metric (float32 state) puts every edge in the same bin.
    metric = metrics.ExpectedCalibrationError(from_logits=False)
    metric.update_state(labels, scores)
    np.testing.assert_array_equal(metric.count.numpy(), count)
    np.testing.assert_allclose(float(metric.result()), ece, rtol=1e-6)
    # All at confidence 1 and right: one full last bin, ECE 0.
    assert metrics.reliability([0, 1], [[1.0, 0.0], [0.0, 1.0]], from_logits=False)[
        "count"].tolist() == [0] * 14 + [2]


def test_perfect_calibration_gives_zero():
    # Per bin, the share right equals the confidence: 0.5 (2 of 4), 0.75 (3 of 4), 1 (2 of 2).
    probabilities = [[0.5, 0.5]] * 4 + [[0.75, 0.25]] * 4 + [[1.0, 0.0]] * 2
    labels = [0, 0, 1, 1] + [0, 0, 0, 1] + [0, 0]
    assert metrics.expected_calibration_error(labels, probabilities,
                                              from_logits=False) == pytest.approx(0, abs=1e-12)
    # The same from logits: log-probabilities are logits of the same softmax.
    with np.errstate(divide="ignore"):
        logits = np.maximum(np.log(probabilities), -1e4)
    assert metrics.expected_calibration_error(labels, logits) == pytest.approx(0, abs=1e-12)
    metric = metrics.ExpectedCalibrationError()
    metric.update_state(labels, logits.astype(np.float32))
    assert float(metric.result()) == pytest.approx(0, abs=1e-6)
    diagram = metrics.reliability(labels, probabilities, from_logits=False)
    shown = diagram["count"] > 0
    np.testing.assert_allclose(diagram["accuracy"][shown], diagram["confidence"][shown])
    assert np.isnan(diagram["accuracy"][~shown]).all()


def test_nll_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    expected = (1000.0 + np.log(3.0)) / 2  # -log softmax: 1000 (underflows to 0), then log 3.
    assert metrics.negative_log_likelihood([1, 2], logits) == pytest.approx(expected)
    assert metrics.negative_log_likelihood([0], [[30.0, 0.0]]) == pytest.approx(
        np.log1p(np.exp(-30.0)), rel=1e-9)


def _ece_batches(rng, n=60):
    labels = rng.integers(0, C, size=n)
    logits = rng.normal(scale=2.0, size=(n, C)).astype(np.float32)
    logits[np.arange(n), labels] += 1.5
    return labels, logits


def test_ece_metric_matches_numpy_across_batches_and_in_tf_function(rng):
    batches = [_ece_batches(rng) for _ in range(3)]
    labels = np.concatenate([b[0] for b in batches])
    logits = np.concatenate([b[1] for b in batches])
    expected = metrics.expected_calibration_error(labels, logits)
    eager = metrics.ExpectedCalibrationError()
    for (y, z), form in zip(batches, (lambda y: y, lambda y: np.eye(C)[y], lambda y: y[:, None])):
        eager.update_state(form(y), z)
    np.testing.assert_allclose(float(eager.result()), expected, rtol=1e-5)
    np.testing.assert_allclose(eager.count.numpy(), metrics.reliability(labels, logits)["count"])

    graph = metrics.ExpectedCalibrationError()

    @tf.function
    def update(y, z):
        graph.update_state(y, z)

    for y, z in batches:
        update(tf.constant(y), tf.constant(z))
    np.testing.assert_allclose(float(graph.result()), expected, rtol=1e-5)
    # Probabilities, and an integer sample weight counts an example that many times.
    probs = metrics.ExpectedCalibrationError(bins=10, from_logits=False)
    weights = rng.integers(0, 3, size=len(labels))
    probs.update_state(labels, _softmax(logits), sample_weight=weights)
    np.testing.assert_allclose(
        float(probs.result()),
        metrics.expected_calibration_error(np.repeat(labels, weights),
                                           np.repeat(_softmax(logits), weights, axis=0),
                                           bins=10, from_logits=False), rtol=1e-5)
    eager.reset_state()
    assert float(eager.result()) == 0.0


def test_ece_metric_in_compile_and_evaluate(rng):
    labels, logits = _ece_batches(rng, n=200)
    inputs = keras.Input((C,))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=tfimb.SoftmaxCrossEntropy(), metrics=[metrics.ExpectedCalibrationError()])
    result = model.evaluate(logits, labels, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["ece"], metrics.expected_calibration_error(labels, logits),
                               rtol=1e-5)


def test_ece_metric_config_round_trip(rng):
    metric = metrics.ExpectedCalibrationError(bins=10, from_logits=False, name="calibration")
    config = metric.get_config()
    assert config["bins"] == 10 and config["from_logits"] is False
    assert config["name"] == "calibration"
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(restored) is metrics.ExpectedCalibrationError
    assert restored.get_config() == config
    assert metrics.ExpectedCalibrationError.from_config(config).get_config() == config
    labels, logits = _ece_batches(rng)
    for m in (metric, restored):
        m.update_state(labels, _softmax(logits))
    assert float(restored.result()) == float(metric.result())


def test_calibration_validation_is_one_line():
    import re

    cases = [
        (lambda: metrics.ExpectedCalibrationError(bins=0),
         "Invalid value for argument `bins`. Expected an integer >= 1. Received: bins=0"),
        (lambda: metrics.ExpectedCalibrationError(bins=2.5), "Received: bins=2.5"),
        (lambda: metrics.ExpectedCalibrationError(bins=True), "Received: bins=True"),
        (lambda: metrics.ExpectedCalibrationError(from_logits="yes"),
         "Invalid value for argument `from_logits`. Expected true or false."),
        (lambda: metrics.expected_calibration_error([0], [[1.0, 0.0]], bins=0),
         "Expected an integer >= 1. Received: bins=0"),
        (lambda: metrics.reliability([0], [[1.0, 0.0]], bins=-3), "Received: bins=-3"),
        (lambda: metrics.expected_calibration_error([0, 1], [0.2, 0.8]),
         "`y_pred`. Expected scores of shape (N, C) with N >= 1"),
        (lambda: metrics.expected_calibration_error([0], [[1.2, -0.2]], from_logits=False),
         "`y_pred`. Expected probabilities in [0, 1]"),
        (lambda: metrics.expected_calibration_error([0], [[np.nan, 0.0]]),
         "`y_pred`. Expected finite scores"),
        (lambda: metrics.negative_log_likelihood([0], [[np.inf, 0.0]]),
         "`logits`. Expected finite scores"),
        (lambda: metrics.negative_log_likelihood([0, 1], [[1.0, 0.0]]),
         "Expected the same number of examples. Received: 2 labels in y_true and 1 in logits"),
        (lambda: metrics.expected_calibration_error([2], [[1.0, 0.0]]),
         "`y_true`. Expected class ids in [0, 2)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value), str(info.value)
