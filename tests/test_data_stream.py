"""Streamed data (`data.stream`): the same examples, counts and batches as in memory, images read
inside tf.data; exact resume; tensorflow-datasets records read with decoding skipped; the
ImageNet-style transforms of large images."""

import json

import numpy as np
import pytest

import keras
import tensorflow as tf

from cli_helpers import run_tfimb
from tfimb import config, data
from tfimb.experiments import classify


def _folder(root, size=(8, 8), per_class=(9, 7, 5), test=3, seed=0):
    """root/{train,test}/c<k>/*.png of random pixels (distinct per file)."""
    rng = np.random.default_rng(seed)
    for split, counts in (("train", per_class), ("test", [test] * len(per_class))):
        for c, n in enumerate(counts):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return root


def _data_config(root, **data):
    raw = {"data": {"source": "folder", "dir": str(root), "validation_per_class": 1, **data},
           "imbalance": {"minority": [2], "minority_count": 2}}
    return config.resolve(raw)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_a_streamed_folder_gives_the_in_memory_examples_counts_and_batches(tmp_path):
    cfg = _data_config(_folder(tmp_path))
    memory = data.load(cfg.data, cfg.imbalance, stream=False)
    streamed = data.load(cfg.data, cfg.imbalance, stream=True)
    assert not memory.streamed and memory.train.images is not None
    assert streamed.streamed and streamed.train.images is None
    assert isinstance(streamed.train.streamed, data.FileImages)
    assert streamed.counts.tolist() == memory.counts.tolist() == [8, 6, 2]
    assert streamed.image_shape == memory.image_shape == (8, 8, 3)
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(streamed, name).labels,
                                      getattr(memory, name).labels)
    for epoch in (0, 1):  # Training: the same order and augmentation, epoch by epoch.
        a = _batches(data.pipeline(memory.train, 4, True, seed=3, epoch=epoch))
        b = _batches(data.pipeline(streamed.train, 4, True, seed=3, epoch=epoch))
        assert len(a) == len(b) == 4
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    for split in ("validation", "test"):
        for (xa, ya), (xb, yb) in zip(
                _batches(data.pipeline(getattr(memory, split), 4, False)),
                _batches(data.pipeline(getattr(streamed, split), 4, False))):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    # Channel statistics: exact in memory; a streamed split of fewer images than the sample
    # size reads them all, so the two agree.
    for a, b in zip(data.split_statistics(memory.train), data.split_statistics(streamed.train)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_stream_auto_decides_by_the_decoded_size(tmp_path, monkeypatch):
    cfg = _data_config(_folder(tmp_path))
    assert cfg.data.stream == "auto"
    assert not data.load(cfg.data, cfg.imbalance).streamed
    monkeypatch.setattr(data, "STREAM_AUTO_BYTES", 8 * 8 * 3 * 10)  # 21 images > 10 images.
    assert data.load(cfg.data, cfg.imbalance).streamed
    with pytest.raises(config.ConfigError, match=r"`data.stream`.*Received: data.stream='sometimes'"):
        config.resolve({}, ["data.stream=sometimes"])
    with pytest.raises(config.ConfigError, match="flows train from images held in memory"):
        config.resolve_flow({}, ["data.stream=true"])


class _StopAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.slow
def test_a_streamed_run_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    root = _folder(tmp_path / "images", per_class=(12, 10, 8))
    overrides = ["data.source=folder", f"data.dir={root}", "data.stream=true",
                 "imbalance.minority=[2]", "imbalance.minority_count=4", "model.name=resnet8",
                 "train.epochs=2", "train.batch_size=4", "train.lr_values=[0.05]",
                 "train.lr_boundaries=[]", "train.checkpoint_every=2",
                 "mixed_precision=float32"]
    cfg = config.resolve({}, overrides)
    whole = classify.run(cfg, tmp_path / "whole", verbose=0)
    with pytest.raises(KeyboardInterrupt):
        classify.run(cfg, tmp_path / "cut", verbose=0, callbacks=[_StopAt(1, 2)])
    resumed = classify.run(cfg, tmp_path / "cut", resume=True, verbose=0)
    assert resumed["accuracy"] == whole["accuracy"]
    assert resumed["confusion_matrix"] == whole["confusion_matrix"]
    for name in ("whole", "cut"):
        assert json.loads((tmp_path / name / "counts.json").read_text())["counts"] == [12, 10, 4]
    a = keras.saving.load_model(tmp_path / "whole" / "model.keras", compile=False)
    b = keras.saving.load_model(tmp_path / "cut" / "model.keras", compile=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


def test_tfds_streams_records_with_image_decoding_skipped():
    import tensorflow_datasets as tfds

    cfg = config.resolve({"data": {"source": "tfds", "name": "cifar10",
                                   "validation_per_class": 2},
                          "imbalance": {"long_tail_factor": 10}})
    with tfds.testing.mock_data(num_examples=300):
        memory = data.load(cfg.data, cfg.imbalance, stream=False)
        streamed = data.load(cfg.data, cfg.imbalance, stream=True)
        assert isinstance(streamed.train.streamed, data.TfdsImages)
        assert streamed.train.images is None and streamed.image_shape == (32, 32, 3)
        assert streamed.counts.tolist() == memory.counts.tolist()
        np.testing.assert_array_equal(streamed.test.labels, memory.test.labels)
        # Evaluation reads the selected records in order: the in-memory images exactly.
        for split in ("validation", "test"):
            x = np.concatenate([b[0] for b in _batches(
                data.pipeline(getattr(streamed, split), 64, False))])
            np.testing.assert_array_equal(x, getattr(memory, split).images.astype(np.float32))
        # Training: every selected example once per epoch, the same way for the same epoch.
        epoch = _batches(data.pipeline(streamed.train, 16, True, seed=1, epoch=0))
        labels = np.concatenate([y for _, y in epoch])
        assert np.bincount(labels, minlength=10).tolist() == streamed.counts.tolist()
        again = _batches(data.pipeline(streamed.train, 16, True, seed=1, epoch=0))
        for (xa, ya), (xb, yb) in zip(epoch, again):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)


def test_large_streamed_images_get_imagenet_transforms(tmp_path):
    root = _folder(tmp_path, size=(90, 120), per_class=(3, 3), test=2)
    cfg = config.resolve({"data": {"source": "folder", "dir": str(root), "image_size": 72,
                                   "stream": True}, "imbalance": None})
    dataset = data.load(cfg.data, cfg.imbalance)
    assert dataset.image_shape == (72, 72, 3)
    train = _batches(data.pipeline(dataset.train, 6, True, seed=0, epoch=0))
    assert train[0][0].shape == (6, 72, 72, 3)
    again = _batches(data.pipeline(dataset.train, 6, True, seed=0, epoch=0))
    np.testing.assert_array_equal(train[0][0], again[0][0])  # Deterministic by (seed, epoch).
    other = _batches(data.pipeline(dataset.train, 6, True, seed=0, epoch=1))
    assert not np.array_equal(train[0][0], other[0][0])
    test = _batches(data.pipeline(dataset.test, 4, False))
    assert test[0][0].shape == (4, 72, 72, 3)
    # Evaluation: the shorter side to ceil(72 / 0.875) = 83, then the central 72 x 72.
    image = tf.io.decode_png((root / "test" / "c0" / "000.png").read_bytes()).numpy()
    resized = tf.image.resize(image, (83, 111), antialias=True)
    expected = tf.image.resize_with_crop_or_pad(
        tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), 72, 72).numpy()
    np.testing.assert_array_equal(test[0][0][0], expected.astype(np.float32))


def test_worker_shares_are_disjoint_and_make_up_each_global_batch(tmp_path):
    cfg = _data_config(_folder(tmp_path, per_class=(13, 9, 6)))
    dataset = data.load(cfg.data, cfg.imbalance, stream=True)
    whole = _batches(data.pipeline(dataset.train, 8, True, seed=5, epoch=2,
                                   drop_remainder=True))
    shares = [_batches(data.pipeline(dataset.train, 4, True, seed=5, epoch=2,
                                     drop_remainder=True, num_shards=2, shard_index=w))
              for w in (0, 1)]
    assert len(whole) == 2 and all(len(share) >= 2 for share in shares)
    for step, (x, y) in enumerate(whole):
        # The step's global batch is the two workers' batches, example by example
        # (worker 0 the even positions, worker 1 the odd ones), augmented alike.
        parts = [share[step] for share in shares]
        np.testing.assert_array_equal(x[0::2], parts[0][0])
        np.testing.assert_array_equal(x[1::2], parts[1][0])
        np.testing.assert_array_equal(y[0::2], parts[0][1])
        np.testing.assert_array_equal(y[1::2], parts[1][1])


@pytest.mark.slow
def test_a_streamed_run_on_two_replicas_trains_like_the_in_memory_run(tmp_path):
    """Two logical CPU replicas (each run a fresh `tfimb train` process, which sets them up):
    streamed, each replica reads its own per-replica batches; the weights match."""
    root = _folder(tmp_path / "images", per_class=(12, 10, 8))
    base = ["data.source=folder", f"data.dir={root}", "imbalance.minority=[2]",
            "imbalance.minority_count=4", "model.name=resnet8", "train.epochs=1",
            "train.batch_size=8", "train.lr_values=[0.05]", "train.lr_boundaries=[]",
            "mixed_precision=float32", "distribute.strategy=mirrored",
            "distribute.num_cpu_devices=2"]
    weights = {}
    (tmp_path / "run.yaml").write_text("{}\n")
    for stream in ("false", "true"):
        args = ["train", "run.yaml", "--workdir", str(tmp_path / stream)]
        for override in base + [f"data.stream={stream}"]:
            args += ["--set", override]
        result = run_tfimb(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        weights[stream] = keras.saving.load_model(tmp_path / stream / "model.keras",
                                                  compile=False).get_weights()
        assert json.loads((tmp_path / stream / "results.json").read_text())["replicas"] == 2
    for a, b in zip(weights["false"], weights["true"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_streamed_image_of_another_size_fails_naming_its_file(tmp_path):
    root = _folder(tmp_path)
    odd = root / "train" / "c1" / "odd.png"
    odd.write_bytes(tf.io.encode_png(np.zeros((12, 8, 3), np.uint8)).numpy())
    cfg = config.resolve({"data": {"source": "folder", "dir": str(root), "stream": True},
                          "imbalance": None})
    dataset = data.load(cfg.data, cfg.imbalance)  # Listing only: nothing decoded yet.
    assert dataset.image_shape == (8, 8, 3)
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        _batches(data.pipeline(dataset.train, 4, False))
    message = str(caught.value)
    assert str(odd) in message and "[12 8 3]" in message and "data.image_size" in message


@pytest.mark.slow
def test_two_local_workers_streaming_their_shares_train_like_one_process(tmp_path):
    """Each of 2 multi-worker processes reads only its share of every global batch; with the
    batch-norm statistics of the global batch, the run equals one process reading it all."""
    root = _folder(tmp_path / "images", per_class=(12, 10, 8))
    (tmp_path / "tiny.yaml").write_text(
        f"data: {{source: folder, dir: {root}, stream: true}}\n"
        "imbalance: {minority: [2], minority_count: 2}\n"   # 24 images: 3 global batches.
        "model: {name: resnet8}\n"
        "train: {epochs: 2, batch_size: 8, lr_values: [0.05], lr_boundaries: []}\n"
        "mixed_precision: float32\n"
        "distribute: {sync_batch_norm: true}\n")
    import yaml

    one = classify.run(config.resolve(yaml.safe_load((tmp_path / "tiny.yaml").read_text())),
                       tmp_path / "one", verbose=0)
    result = run_tfimb("train", "tiny.yaml", "--workdir", "two", "--local-workers", "2",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert one["confusion_matrix"] == two["confusion_matrix"]
    a = keras.saving.load_model(tmp_path / "one" / "model.keras", compile=False)
    b = keras.saving.load_model(tmp_path / "two" / "model.keras", compile=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert np.linalg.norm(wa - wb) <= 1e-4 * np.linalg.norm(wa) + 1e-6
