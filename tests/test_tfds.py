"""tensorflow-datasets, the default data source, on the installed packages and offline.

`tfds.testing.mock_data` replaces the records with generated ones but runs the rest of
`tfds.load`; it does not reach the builder's code path, which a fresh install once broke
(importlib_resources missing), so that path is tested on its own.
"""

import pathlib

import numpy as np
import pytest
import yaml

from tfimb import config, data
from tfimb.experiments import density

tfds = pytest.importorskip("tensorflow_datasets")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "tfimb" / "configs").glob("*.yaml"))
# Enough generated examples per split that every class has the 250 + 100 images the imbalanced
# CIFAR-10 protocol and its search carve out (labels are drawn uniformly).
MOCK_EXAMPLES = 5000


def test_builder_code_path_works_offline(tmp_path):
    """The path that every `tfds.load` takes before downloading (fails without
    importlib_resources, which tfds 4.9.10 needs and does not declare)."""
    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    urls = builder.url_infos
    assert any("cifar-10" in url for url in urls)
    assert builder.info.features["label"].num_classes == 10


def test_classifier_long_tail_under_mock_data():
    cfg = config.resolve({"data": {"source": "tfds", "name": "cifar10"},
                          "imbalance": {"long_tail_factor": 10}})
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        ds = data.load(cfg.data, cfg.imbalance)
        batch = next(iter(data.pipeline(ds.train, 64, training=True, seed=0, epoch=0)))
    # n_max is the smallest class's available count (the head keeps all of it).
    np.testing.assert_array_equal(ds.counts, data.long_tail_counts(ds.counts[0], 10, 10))
    assert ds.counts[-1] == int(ds.counts[0] / 10)
    assert len(ds.test) == MOCK_EXAMPLES and ds.test.images.shape[1:] == (32, 32, 3)
    assert batch[0].shape == (64, 32, 32, 3) and batch[0].dtype == "float32"


def test_classifier_group_imbalance_under_mock_data():
    cfg = config.resolve({"data": {"source": "tfds", "name": "cifar10"}})  # The protocol.
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        ds = data.load(cfg.data, cfg.imbalance)
    assert ds.counts[[1, 4, 6]].tolist() == [250, 250, 250]
    assert ds.num_classes == 10 and ds.train.images.dtype == np.uint8


def test_flow_pipeline_under_mock_data():
    cfg = config.resolve_flow(yaml.safe_load((ROOT / "configs/realnvp/cifar10.yaml").read_text()))
    with tfds.testing.mock_data(num_examples=256):
        ds = data.load(cfg.data, None)
        batch = next(iter(density.pipeline(ds.train.images, 32, True, seed=0, epoch=0)))
    assert batch.shape == (32, 32, 32, 3) and batch.dtype == "uint8"


def _resolve_shipped(path):
    """(kind, config) of a shipped YAML, by the command that takes it."""
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("variants", None)
    if path.parent.name == "realnvp" or path.stem.startswith("flow_"):
        return "flow", config.resolve_flow(raw)
    if "search" in raw:
        return "classifier", config.resolve_search(raw)[0]
    return "classifier", config.resolve(raw)


_LOADED = {}  # Many configs share their data section: load each distinct one once.


def _mock_examples(data_config, batch_size):
    """Generated examples per split: MOCK_EXAMPLES where a protocol carves classes out of a
    CIFAR-sized dataset; two batches for the large-image datasets read at full size (ImageNet-LT,
    iNaturalist: imbalanced as published, nothing carved, and classes a mock cannot fill), whose
    5000 generated images took 10-20 s per config."""
    return 2 * batch_size if (data_config.image_size or 0) >= 128 else MOCK_EXAMPLES


def _mock_batch(data_config, imbalance, batch_size, flow=False, seed=0, augment=True):
    """(dataset, first training batch) under the mock: a streamed split reads its records when
    the pipeline runs, so both happen inside it."""
    examples = _mock_examples(data_config, batch_size)
    key = (repr(data_config), repr(imbalance), examples)
    with tfds.testing.mock_data(num_examples=examples):
        if key not in _LOADED:
            _LOADED[key] = data.load(data_config, imbalance)
        ds = _LOADED[key]
        if flow:
            batch = next(iter(density.pipeline(ds.train.images, batch_size, True, seed=0,
                                               epoch=0)))
        else:
            batch = next(iter(data.pipeline(ds.train, batch_size, training=True, seed=seed,
                                            augment=augment, epoch=0)))[0]
    return ds, batch


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_tfds_config_builds_its_pipeline(path):
    kind, cfg = _resolve_shipped(path)
    if cfg.data.source != "tfds":
        pytest.skip(f"data.source is {cfg.data.source!r}")
    if kind == "flow":
        ds, batch = _mock_batch(cfg.data, None, cfg.train.batch_size, flow=True)
    else:
        ds, batch = _mock_batch(cfg.data, cfg.imbalance, cfg.train.batch_size,
                                seed=cfg.data.seed, augment=cfg.data.augment)
    assert batch.shape[0] == cfg.train.batch_size
    if cfg.data.image_size:
        assert tuple(batch.shape[1:3]) == (cfg.data.image_size,) * 2
    if ds.num_classes <= 100:
        assert np.all(ds.counts > 0)
    else:  # ImageNet-LT, iNaturalist: a mock draws too few examples to fill every class.
        assert ds.streamed and ds.counts.sum() == len(ds.train) > 0
