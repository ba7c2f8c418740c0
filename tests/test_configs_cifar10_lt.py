"""configs/cifar10_lt: the CIFAR-10-LT protocol of Cao et al. / Cui et al., one file per row."""

import pathlib
import re

import numpy as np
import pytest
import yaml

from tfimb import config, data
from tfimb.experiments import classify

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "cifar10_lt").glob("*.yaml"))


def test_every_published_row_has_its_file():
    names = {p.stem for p in CONFIGS}
    required = {f"{row}_r{r}" for row in ("ce", "focal", "cb_focal", "ldam_drw",
                                          "balanced_softmax") for r in (100, 10)}
    assert required <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_protocol(path):
    text = path.read_text()
    cfg = config.resolve(yaml.safe_load(text))
    ratio = int(re.search(r"_r(\d+)$", path.stem).group(1))
    assert cfg.imbalance.long_tail_factor == ratio
    counts = data.long_tail_counts(5000, 10, ratio)
    assert counts.sum() == {100: 12406, 10: 20431}[ratio]
    assert cfg.data.source == "tfds" and cfg.data.name == "cifar10"
    assert cfg.data.validation_per_class == 0  # Evaluated on the full test split.
    assert cfg.model.name == "resnet32"
    assert cfg.model.head == ("cosine" if cfg.loss.name == "ldam" else "dense")
    t = cfg.train
    assert (t.epochs, t.batch_size, t.momentum, t.weight_decay) == (200, 128, 0.9, 2e-4)
    lr = [classify.learning_rate(e, cfg) for e in range(200)]
    np.testing.assert_allclose(lr[:5], [0.02, 0.04, 0.06, 0.08, 0.1])  # epoch e <= 5: 0.1 e / 5
    assert set(lr[5:160]) == {0.1} and set(lr[160:180]) == {0.001}
    assert set(lr[180:]) == {1e-5}
    if cfg.loss.name == "ldam":
        assert cfg.loss.drw_epoch == 160 and cfg.loss.drw_beta == 0.9999
    # Evaluated epochs: every 5th, every one after the last-but-one drop, and the last.
    evaluated = [e for e in range(200) if cfg.evaluation.evaluates(e, 200)]
    assert evaluated[:3] == [4, 9, 14] and set(range(160, 200)) <= set(evaluated)
    # The header: purpose, command, expected result with its source.
    assert f"tfimb train configs/cifar10_lt/{path.name}" in text
    expected = re.search(r"# Expected: (.*)", text).group(1)
    assert re.search(r"\d\d\.\d\d% top-1", expected) or "no figure published" in expected
    assert "Table" in text or "no figure published" in expected
