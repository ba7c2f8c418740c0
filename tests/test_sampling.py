"""Class-aware sampling (`data.sampling`, `tfimb.data.sampling`): p_j proportional to n_j^q
against the formula, empirical class frequencies over many batches against p_j, determinism by
(seed, epoch), exact resume, and the same batches in memory, streamed, sharded and through the
tf.data service."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfimb import config, data
from tfimb.config import ConfigError
from tfimb.data import sampling
from tfimb.data.splits import Split
from tfimb.experiments import classify
from test_faults import _Signal
from tfimb.runtime import preemption

COUNTS = np.array([400, 120, 40, 10])
LABELS = np.repeat(np.arange(4), COUNTS)


def _formula(counts, q):
    weights = np.asarray(counts, np.float64) ** q
    return weights / weights.sum()


@pytest.mark.parametrize("name, q", [("instance", 1.0), ("class_balanced", 0.0),
                                     ("square_root", 0.5)])
def test_class_probabilities_are_n_to_the_q_normalised(name, q):
    np.testing.assert_allclose(sampling.class_probabilities(COUNTS, name), _formula(COUNTS, q))


def test_progressive_moves_from_instance_to_class_balanced_over_the_epochs():
    epochs = 8
    for t in (0, 3, 7):
        expected = (1 - t / epochs) * _formula(COUNTS, 1) + t / epochs * _formula(COUNTS, 0)
        np.testing.assert_allclose(
            sampling.class_probabilities(COUNTS, "progressive", t, epochs), expected)
    # The first epoch is instance-balanced: every example once.
    np.testing.assert_array_equal(sampling.epoch_indices(LABELS, "progressive", 3, 0, epochs),
                                  np.arange(len(LABELS)))


def test_an_empty_class_is_never_drawn():
    p = sampling.class_probabilities([5, 0, 3], "class_balanced")
    assert p.tolist() == [0.5, 0.0, 0.5]


@pytest.mark.parametrize("n", [7, 570, 1001])
def test_draws_per_class_sum_to_the_epoch_and_round_n_p(n):
    p = _formula(COUNTS, 0.5)
    m = sampling.draws_per_class(p, n)
    assert m.sum() == n
    assert np.all(np.abs(m - n * p) < 1)


@pytest.mark.parametrize("name", ["class_balanced", "square_root", "progressive"])
def test_an_epoch_keeps_its_length_and_cycles_each_class(name):
    index = sampling.epoch_indices(LABELS, name, seed=1, epoch=2, epochs=5)
    assert len(index) == len(LABELS) and np.all(np.diff(index) >= 0)
    drawn = np.bincount(index, minlength=len(LABELS))
    for c, n in enumerate(COUNTS):
        times = drawn[LABELS == c]
        m = times.sum()
        # Every member floor(m / n) or one more times: a class cycles its examples.
        assert times.min() == m // n and times.max() <= -(-m // n)


def test_the_draw_is_a_function_of_seed_and_epoch():
    first = sampling.epoch_indices(LABELS, "class_balanced", seed=4, epoch=1)
    np.testing.assert_array_equal(first,
                                  sampling.epoch_indices(LABELS, "class_balanced", 4, 1))
    assert not np.array_equal(first, sampling.epoch_indices(LABELS, "class_balanced", 4, 2))
    assert not np.array_equal(first, sampling.epoch_indices(LABELS, "class_balanced", 5, 1))


def _split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(LABELS), 4, 4, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = LABELS  # The label is readable from the image: batches keep pairs.
    return Split(images, LABELS.copy())


@pytest.mark.parametrize("name", ["class_balanced", "square_root", "progressive"])
def test_class_frequencies_over_many_batches_match_p_within_sampling_error(name):
    split, epochs, batch = _split(), 20, 32
    seen = np.zeros(4)
    expected = np.zeros(4)
    for epoch in range(epochs):
        ds = data.pipeline(sampling.resample(split, name, 0, epoch, epochs), batch, True,
                           seed=0, augment=False, epoch=epoch)
        for x, y in ds:
            np.testing.assert_array_equal(x.numpy()[:, 0, 0, 0], y.numpy())
            seen += np.bincount(y.numpy(), minlength=4)
        expected += len(LABELS) * sampling.class_probabilities(COUNTS, name, epoch, epochs)
    total = seen.sum()
    assert total == epochs * len(LABELS)
    p = expected / total
    sigma = np.sqrt(total * p * (1 - p))  # Multinomial: the draw is no noisier than this.
    assert np.all(np.abs(seen - expected) <= 4 * sigma + 1), (seen, expected)


def test_in_memory_streamed_sharded_and_indexed_epochs_are_the_same_batches(tmp_path):
    from test_data_stream import _data_config, _folder

    cfg = _data_config(_folder(tmp_path, per_class=(12, 6, 3)))
    memory = data.load(cfg.data, cfg.imbalance, stream=False).train
    streamed = data.load(cfg.data, cfg.imbalance, stream=True).train
    for epoch in (0, 1):
        picked = [sampling.resample(s, "class_balanced", 3, epoch, 2) for s in (memory, streamed)]
        assert np.bincount(picked[0].labels).tolist() == [6, 6, 6]  # 18 = 11 + 5 + 2
        whole = [[(x.numpy(), y.numpy()) for x, y in data.pipeline(s, 4, True, 3, epoch=epoch)]
                 for s in picked]
        for (xa, ya), (xb, yb) in zip(*whole):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        indexed = data.indexed_epoch(picked[1], 4, 3, epoch)
        for (_, x, y), (xb, yb) in zip(indexed.batches(), whole[0]):
            np.testing.assert_array_equal(x.numpy(), xb)
            np.testing.assert_array_equal(y.numpy(), yb)
        shards = [[y.numpy() for _, y in data.pipeline(picked[1], 2, True, 3, epoch=epoch,
                                                       num_shards=2, shard_index=i)]
                  for i in range(2)]
        together = np.concatenate([np.concatenate([a, b]) for a, b in zip(*shards)])
        np.testing.assert_array_equal(np.sort(together), np.sort(picked[0].labels))


def test_the_tf_data_service_delivers_the_sampled_batches(tmp_path):
    from test_data_stream import _data_config, _folder

    cfg = _data_config(_folder(tmp_path, per_class=(12, 6, 3)))
    train = data.load(cfg.data, cfg.imbalance, stream=True).train
    picked = sampling.resample(train, "square_root", 1, 1, 3)
    local = [(x.numpy(), y.numpy()) for x, y in data.pipeline(picked, 4, True, 1, epoch=1)]
    server = data.service.Service(workers=2)
    try:
        served = [(x.numpy(), y.numpy()) for x, y in data.service.in_order(
            data.indexed_epoch(picked, 4, 1, 1), server.address)]
    finally:
        server.stop()
    assert len(served) == len(local)
    for (xa, ya), (xb, yb) in zip(served, local):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_a_streamed_tfds_split_repeats_the_records_an_epoch_draws():
    import tensorflow_datasets as tfds

    raw = {"data": {"source": "tfds", "name": "cifar10", "stream": True},
           "imbalance": {"long_tail_factor": 10}}
    cfg = config.resolve(raw)
    with tfds.testing.mock_data(num_examples=60):
        train = data.load(cfg.data, cfg.imbalance).train
        picked = sampling.resample(train, "class_balanced", 0, 0, 1, 10)
        labels = np.concatenate([y.numpy() for _, y in data.pipeline(picked, 16, True, 0,
                                                                     epoch=0)])
    assert len(labels) == len(train) == len(picked)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                  np.bincount(picked.labels, minlength=10))
    assert np.bincount(np.bincount(picked.streamed.positions)).size > 2  # Some drawn twice.


def test_a_sampled_run_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    cfg = config.resolve({
        "data": {"source": "digits", "augment": False, "sampling": "progressive"},
        "imbalance": {"minority": [1, 4, 6], "minority_count": 7, "majority_count": 25},
        "model": {"name": "resnet8"}, "loss": {"name": "softmax_cross_entropy"},
        "train": {"epochs": 2, "batch_size": 28, "lr_values": [0.05, 0.01],
                  "lr_boundaries": [1], "checkpoint_every": 2},
        "mixed_precision": "float32"})
    whole = classify.run(cfg, tmp_path / "whole", verbose=0)
    with pytest.raises(preemption.Preempted):
        classify.run(cfg, tmp_path / "cut", verbose=0, callbacks=[_Signal(1, 4)])
    resumed = classify.run(cfg, tmp_path / "cut", resume=True, verbose=0)
    assert resumed["accuracy"] == whole["accuracy"]
    assert resumed["confusion_matrix"] == whole["confusion_matrix"]
    rows = [list(csv.DictReader((tmp_path / d / "history.csv").open())) for d in ("whole", "cut")]
    for row in rows[0] + rows[1]:
        del row["epoch_seconds"]
    assert len(rows[0]) == 2 and rows[0] == rows[1]
    counts = json.loads((tmp_path / "cut" / "counts.json").read_text())["counts"]
    assert counts == json.loads((tmp_path / "whole" / "counts.json").read_text())["counts"]


def test_sampled_dataset_feeds_fit_epoch_by_epoch():
    x = np.random.default_rng(0).normal(size=(len(LABELS), 3)).astype(np.float32)
    ds = data.sampled_dataset(x, LABELS, "class_balanced", batch_size=64, epochs=3, seed=2)
    steps = -(-len(LABELS) // 64)
    batches = list(ds)
    assert len(batches) == 3 * steps
    for e in range(3):
        ys = np.concatenate([b[1].numpy() for b in batches[e * steps:(e + 1) * steps]])
        assert len(ys) == len(LABELS)
        np.testing.assert_array_equal(
            np.sort(ys), np.sort(LABELS[sampling.epoch_indices(LABELS, "class_balanced", 2, e,
                                                               3)]))
    for xb, yb in batches[:2]:
        rows = [np.flatnonzero((x == row).all(1))[0] for row in xb.numpy()]
        np.testing.assert_array_equal(LABELS[rows], yb.numpy())
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=3, steps_per_epoch=steps, verbose=0)
    assert len(history.history["loss"]) == 3


@pytest.mark.parametrize("call, message", [
    (lambda: sampling.class_probabilities(COUNTS, "balanced"),
     "Invalid value for argument `sampling`. Expected one of ['instance', 'class_balanced', "
     "'square_root', 'progressive']. Received: sampling='balanced'"),
    (lambda: sampling.class_probabilities(COUNTS, "progressive", 4, 4),
     "Invalid value for argument `epoch`. Expected 0 <= epoch < epochs=4. Received: epoch=4"),
    (lambda: sampling.class_probabilities([0, 0], "square_root"),
     "Invalid value for argument `counts`"),
    (lambda: sampling.epoch_indices(np.array([0.5, 1.0]), "square_root"),
     "Invalid value for argument `labels`"),
    (lambda: data.sampled_dataset(np.zeros((3, 2)), [0, 1], "square_root", 2, 1),
     "Expected as many examples in x as labels in y. Received: 3 and 2"),
])
def test_bad_arguments_are_one_line(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_config_key_is_checked_and_flows_refuse_it():
    with pytest.raises(ConfigError, match=r"Invalid value for key `data.sampling`. Expected one "
                                          r"of \['instance'"):
        config.resolve({"data": {"sampling": "balanced"}})
    assert config.resolve({"data": {"sampling": "square_root"}}).data.sampling == "square_root"
    with pytest.raises(ConfigError, match="Expected 'instance': flows draw every image once"):
        config.resolve_flow({"data": {"sampling": "class_balanced"}})
