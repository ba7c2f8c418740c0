import numpy as np
import pytest

import tensorflow as tf

import reference
import tfimb


def test_effective_number_limits():
    counts = np.array([1, 2, 10, 100, 5000])
    np.testing.assert_array_equal(tfimb.effective_number(counts, 0.0), np.ones(5))
    # E_1 = 1 for every beta; E_n -> 1/(1-beta) for large n; E_n -> n as beta -> 1.
    for beta in (0.5, 0.9, 0.999):
        assert tfimb.effective_number([1, 2], beta)[0] == pytest.approx(1.0)
    np.testing.assert_allclose(tfimb.effective_number([10 ** 7, 2], 0.9)[0], 10.0)
    np.testing.assert_allclose(tfimb.effective_number(counts, 1 - 1e-12), counts, rtol=1e-6)
    np.testing.assert_allclose(tfimb.effective_number(counts, 0.99),
                               (1 - 0.99 ** counts) / (1 - 0.99), rtol=1e-12)


def test_class_balanced_weights_normalizations():
    counts = [2, 3, 1, 2, 2]
    np.testing.assert_allclose(tfimb.class_balanced_weights(counts, 0.9999),
                               [0.882363, 0.588272, 1.764638, 0.882363, 0.882363], atol=1e-6)
    np.testing.assert_allclose(tfimb.class_balanced_weights(counts, 0.0), np.ones(5))
    raw = tfimb.class_balanced_weights(counts, 0.9, normalization="none")
    np.testing.assert_allclose(raw, (1 - 0.9) / (1 - 0.9 ** np.array(counts)))
    np.testing.assert_allclose(tfimb.class_balanced_weights(counts, 0.9),
                               reference.cb_weights(counts, 0.9))
    assert tfimb.class_balanced_weights(counts, 0.9).dtype == np.float64
    with pytest.raises(ValueError, match=r"`normalization`.*'num_classes', 'none'"):
        tfimb.class_balanced_weights(counts, 0.9, normalization="sum")


def test_class_counts_from_arrays():
    labels = np.array([0, 2, 2, 1, 2])
    np.testing.assert_array_equal(tfimb.class_counts(labels, 4), [1, 1, 3, 0])
    np.testing.assert_array_equal(tfimb.class_counts(labels[:, None], 4), [1, 1, 3, 0])
    np.testing.assert_array_equal(tfimb.class_counts(np.eye(4)[labels], 4), [1, 1, 3, 0])
    np.testing.assert_array_equal(tfimb.class_counts(labels.astype(np.float32), 4), [1, 1, 3, 0])
    np.testing.assert_array_equal(tfimb.class_counts([], 3), [0, 0, 0])


def test_class_counts_from_datasets():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=1000)
    images = np.zeros((1000, 2, 2, 1), np.float32)
    expected = np.bincount(labels, minlength=5)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    np.testing.assert_array_equal(tfimb.class_counts(ds, 5), expected)
    np.testing.assert_array_equal(tfimb.class_counts(ds.batch(64), 5), expected)
    onehot = tf.data.Dataset.from_tensor_slices((images, np.eye(5, dtype=np.float32)[labels]))
    np.testing.assert_array_equal(tfimb.class_counts(onehot, 5), expected)
    np.testing.assert_array_equal(tfimb.class_counts(onehot.batch(100), 5), expected)
    int_onehot = tf.data.Dataset.from_tensor_slices((images, np.eye(5, dtype=np.int64)[labels]))
    np.testing.assert_array_equal(tfimb.class_counts(int_onehot, 5), expected)
    # Batches of exactly C sparse labels (drop_remainder) are batches, not one-hot rows.
    exact = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    np.testing.assert_array_equal(
        tfimb.class_counts(exact.batch(5, drop_remainder=True), 5), expected)
    weighted = tf.data.Dataset.from_tensor_slices((images, labels, np.ones(1000)))
    np.testing.assert_array_equal(tfimb.class_counts(weighted.batch(7), 5), expected)


def test_class_counts_errors():
    with pytest.raises(ValueError, match=r"`labels`.*\[0, 3\).*\[3, 7\]"):
        tfimb.class_counts([0, 3, 7], 3)
    with pytest.raises(ValueError, match=r"`labels`.*integer class ids"):
        tfimb.class_counts([0.5, 1], 3)
    with pytest.raises(ValueError, match=r"`labels`.*one-hot"):
        tfimb.class_counts(np.full((2, 3), 0.5), 3)
    with pytest.raises(ValueError, match=r"`num_classes`.*>= 1"):
        tfimb.class_counts([0], 0)
    with pytest.raises(ValueError, match=r"`labels`.*\(x, y\)"):
        tfimb.class_counts(tf.data.Dataset.range(3), 3)
