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
