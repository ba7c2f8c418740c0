import numpy as np
import pytest

import tensorflow as tf

from tfimb import config, data


def _write_tree(root, counts, split="train", size=8, bad=None):
    for c, n in enumerate(counts):
        folder = root / split / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.full((size, size, 3), 10 * c + i, np.uint8)
            (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    if bad:
        (root / split / "class_0" / bad).write_bytes(b"not an image")


def _folder_config(root, **overrides):
    return config.resolve({"data": {"source": "folder", "dir": str(root), **overrides}},
                          ["imbalance=null"]).data


def test_long_tail_counts_match_cui_et_al():
    np.testing.assert_array_equal(data.long_tail_counts(5000, 10, 100),
                                  [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    np.testing.assert_array_equal(data.long_tail_counts(5000, 10, 1), [5000] * 10)


def test_target_counts():
    imb = config.ImbalanceConfig(minority=[1, 4, 6], minority_count=250)
    np.testing.assert_array_equal(data.target_counts([5000] * 10, imb),
                                  [5000, 250, 5000, 5000, 250, 5000, 250, 5000, 5000, 5000])
    capped = config.ImbalanceConfig(minority=[0], minority_count=10, majority_count=100)
    np.testing.assert_array_equal(data.target_counts([500, 80, 300], capped), [10, 80, 100])
    np.testing.assert_array_equal(data.target_counts([7, 9], None), [7, 9])


def test_digits_imbalance_validation_and_determinism():
    cfg = config.resolve({"data": {"source": "digits", "validation_per_class": 5, "seed": 3},
                          "imbalance": {"minority": [1, 4, 6], "minority_count": 10}})
    first = data.load(cfg.data, cfg.imbalance)
    counts = first.counts
    assert counts[[1, 4, 6]].tolist() == [10, 10, 10]
    assert all(c > 100 for i, c in enumerate(counts) if i not in (1, 4, 6))
    assert np.bincount(first.validation.labels).tolist() == [5] * 10
    assert len(first.test) == 596 and first.train.images.shape[1:] == (8, 8, 1)
    again = data.load(cfg.data, cfg.imbalance)
    np.testing.assert_array_equal(first.train.images, again.train.images)
    other = data.load(config.resolve(cfg.to_dict(), ["data.seed=4"]).data, cfg.imbalance)
    assert not np.array_equal(first.train.images[first.train.labels == 1],
                              other.train.images[other.train.labels == 1])
    # Validation is carved from training images, never from the test split.
    train_pool = {img.tobytes() for img in first.train.images}
    assert not any(img.tobytes() in train_pool for img in first.validation.images)
    np.testing.assert_array_equal(first.test.images, other.test.images)


def test_folder_loader(tmp_path):
    _write_tree(tmp_path, [6, 4, 5])
    _write_tree(tmp_path, [2, 2, 2], split="test")
    cfg = config.resolve({"data": {"source": "folder", "dir": str(tmp_path)},
                          "imbalance": {"minority": [0], "minority_count": 3}})
    ds = data.load(cfg.data, cfg.imbalance)
    assert ds.class_names == ["class_0", "class_1", "class_2"]
    assert ds.counts.tolist() == [3, 4, 5]
    assert ds.train.images.dtype == np.uint8 and ds.train.images.shape[1:] == (8, 8, 3)
    # Pixel values identify the image: class c, index i -> 10c + i.
    assert set(ds.train.images[ds.train.labels == 1][:, 0, 0, 0].tolist()) == {10, 11, 12, 13}
    assert len(ds.test) == 6


def test_folder_errors(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load(_folder_config(tmp_path / "missing"))
    _write_tree(tmp_path, [3, 3])
    with pytest.raises(data.DataError, match="Split folder not found.*test"):
        data.load(_folder_config(tmp_path))
    _write_tree(tmp_path, [3], split="test")
    with pytest.raises(data.DataError, match=r"\['class_1'\] are not in both"):
        data.load(_folder_config(tmp_path))
    (tmp_path / "test" / "class_1").mkdir()
    with pytest.raises(data.DataError, match=r"class_1 holds no .jpg/.jpeg/.png image"):
        data.load(_folder_config(tmp_path))
    _write_tree(tmp_path, [3, 3], split="test")
    cfg = config.resolve({"data": {"source": "folder", "dir": str(tmp_path)},
                          "imbalance": {"minority": [0], "minority_count": 5}})
    with pytest.raises(data.DataError, match="Class 0 has 3 training images available, fewer "
                                             "than the 5 asked for"):
        data.load(cfg.data, cfg.imbalance)
    _write_tree(tmp_path, [0, 0], bad="broken.png")
    with pytest.raises(data.DataError, match=r"Cannot read image .*class_0/broken.png"):
        data.load(_folder_config(tmp_path))


def test_tfds_source_under_mock_data():
    import tensorflow_datasets as tfds

    cfg = config.resolve({"data": {"source": "tfds", "name": "cifar10"},
                          "imbalance": {"minority": [1, 4, 6], "minority_count": 2}})
    with tfds.testing.mock_data(num_examples=200):
        ds = data.load(cfg.data, cfg.imbalance)
    assert ds.num_classes == 10 and len(ds.class_names) == 10  # Mock info: names "0".."9".
    assert ds.counts[[1, 4, 6]].tolist() == [2, 2, 2]
    assert ds.train.images.shape[1:] == (32, 32, 3) and ds.train.images.dtype == np.uint8
    assert len(ds.test) == 200


def test_pipeline_batches_augments_and_repeats_by_seed():
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8),
                       np.arange(20) % 4)

    def epoch(seed):
        return [(x.numpy(), y.numpy()) for x, y in data.pipeline(split, 8, True, seed=seed)]

    first, again, other = epoch(1), epoch(1), epoch(2)
    assert [x.shape for x, _ in first] == [(8, 32, 32, 3), (8, 32, 32, 3), (4, 32, 32, 3)]
    assert first[0][0].dtype == np.float32
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])
    evaluation = [y.numpy() for _, y in data.pipeline(split, 8, False)]
    np.testing.assert_array_equal(np.concatenate(evaluation), split.labels)
    # Augmented images are shifted/flipped copies: pixel sums of crops never exceed the original.
    assert data.augmentation_padding(32) == 4 and data.augmentation_padding(8) == 1


def test_auto_source_takes_the_folder_from_the_config_or_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TFIMB_DATA_DIR", raising=False)
    assert config.resolve({"data": {"source": "auto"}}).data.source == "tfds"
    cfg = config.resolve({"data": {"source": "auto", "dir": str(tmp_path)}})
    assert (cfg.data.source, cfg.data.dir) == ("folder", str(tmp_path))
    monkeypatch.setenv("TFIMB_DATA_DIR", str(tmp_path / "env"))
    cfg = config.resolve({"data": {"source": "auto"}})
    assert (cfg.data.source, cfg.data.dir) == ("folder", str(tmp_path / "env"))
    assert "source: folder" in config.dump(cfg)  # The run records what it read.
    flow = config.resolve_flow({"data": {"source": "auto"}})
    assert flow.data.source == "folder"


def test_tfds_failure_names_both_ways_to_give_data(tmp_path):
    cfg = config.resolve({"data": {"source": "tfds", "name": "no_such_dataset_xyz",
                                   "dir": str(tmp_path)}, "imbalance": None})
    with pytest.raises(data.DataError, match=r"no_such_dataset_xyz.*data.source=folder "
                                             r"--set data.dir=PATH.*TFIMB_DATA_DIR"):
        data.load(cfg.data, cfg.imbalance)


def test_an_image_of_another_size_is_named_or_resized_when_asked(tmp_path):
    _write_tree(tmp_path, [3, 3])
    _write_tree(tmp_path, [2, 2], split="test")
    odd = tmp_path / "train" / "class_1" / "odd.png"
    odd.write_bytes(tf.io.encode_png(np.zeros((12, 10, 3), np.uint8)).numpy())
    with pytest.raises(data.DataError) as caught:
        data.load(_folder_config(tmp_path))
    message = str(caught.value)
    assert f"Image {odd} is 12x10x3" in message and "images are 8x8x3" in message
    assert "1 of 7 differ" in message and "data.image_size" in message
    # A grey image among colour ones is converted to the first image's channels, not refused.
    (tmp_path / "test" / "class_0" / "grey.png").write_bytes(
        tf.io.encode_png(np.full((8, 8, 1), 7, np.uint8)).numpy())
    resized = data.load(_folder_config(tmp_path, image_size=8))
    assert resized.train.images.shape == (7, 8, 8, 3) and resized.test.images.shape[1:] == (8, 8, 3)
    grey = resized.test.images[resized.test.labels == 0][-1]
    assert (grey == 7).all()


def test_channel_statistics_match_numpy_in_chunks():
    """Exact integer sums, a chunk at a time (no float64 copy of the split): NumPy's moments."""
    images = np.random.default_rng(3).integers(0, 256, (2500, 5, 4, 3), dtype=np.uint8)
    reference = images.reshape(-1, 3).astype(np.float64)
    for chunk in (1, 1024, 4096):
        mean, variance = data.channel_statistics(images, chunk=chunk)
        np.testing.assert_array_equal(mean, reference.mean(0))
        np.testing.assert_allclose(variance, reference.var(0), rtol=1e-12)


def test_a_left_out_validation_split_changes_no_training_example():
    """CIFAR-10-LT's profile on CIFAR-10's 5,000 per class: the validation split comes from the
    images the long tail leaves out, and the training set is the one without validation."""
    from tfimb.data.imbalance import subsample

    labels = np.repeat(np.arange(10), 5000)
    imbalance = config.resolve({"imbalance": {"long_tail_factor": 100}}).imbalance
    plain, none = subsample(labels, 0, imbalance, 3, 10)
    train, validation = subsample(labels, 20, imbalance, 3, 10, "left_out")
    assert none.size == 0
    np.testing.assert_array_equal(train, plain)
    assert not set(train) & set(validation)
    # The head class keeps all 5,000: none is left out for it.
    assert np.bincount(labels[validation], minlength=10).tolist() == [0] + [20] * 9
    carved, _ = subsample(labels, 20, imbalance, 3, 10)  # The default carves first.
    assert np.bincount(labels[carved])[0] == 4980
    with pytest.raises(config.ConfigError, match="`data.validation_from`"):
        config.resolve({"data": {"validation_from": "test"}})
