"""Every class of anticipated failure, through the `tfimb` command as a user meets it: one line
`tfimb: ...` on stderr naming what is wrong and where, exit status 2 (command line, config) or
1 (found at run time), and nothing left behind that would refuse the corrected command.

The command runs in this process (`tfimb.cli.main`), so a case costs no TensorFlow start-up;
`tests/test_cli.py` checks the same path in fresh interpreters (start-up noise, --debug).
"""

import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfimb import cli

TINY = """\
data: {source: digits, augment: false}
imbalance: {minority: [1, 4, 6], minority_count: 5, majority_count: 30}
model: {name: resnet8}
train: {epochs: 1, batch_size: 32, lr_values: [0.05], lr_boundaries: []}
mixed_precision: float32
"""

TINY_FLOW = """\
data: {source: digits}
model: {num_scales: 1, num_blocks: 1, num_filters: 4}
train: {epochs: 1, batch_size: 64}
"""


def _tfimb(capsys, *argv):
    """(exit status, the stderr lines) of `tfimb ARGV`."""
    code = cli.main([str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, lines


def _one_line(capsys, code, argv, *fragments):
    got, lines = _tfimb(capsys, *argv)
    assert got == code, lines
    assert len(lines) == 1 and lines[0].startswith("tfimb: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _image_tree(root, size=8, classes=2, per_class=3):
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = np.full((size, size, 3), 40 * c + i, np.uint8)
                (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "flow.yaml").write_text(TINY_FLOW)
    return tmp_path


@pytest.mark.parametrize("overrides, code, fragments", [
    (["loss.name=class_balanced_softmax", "loss.beta=1.0"], 2,
     ["tiny.yaml", "`loss.beta`", "0 <= beta < 1", "Received: loss.beta=1.0"]),
    (["loss.name=focal", "loss.gamma=-1"], 2, ["`loss.gamma`", "0.0 <= gamma", "Received: loss.gamma=-1"]),
    (["imbalance.minority=[10]"], 1, ["`imbalance.minority`", "10"]),
    (["train.epochs=[1"], 2, ["--set train.epochs", "[1"]),
    (["train.epochz=1"], 2, ["Unknown key `train.epochz`"]),
    (["data.validation_per_class=200"], 1, ["`data.validation_per_class`", "leave at least one"]),
])
def test_config_and_data_errors_leave_nothing_behind(tiny, capsys, overrides, code, fragments):
    argv = ["train", "tiny.yaml", "--workdir", "run"]
    for override in overrides:
        argv += ["--set", override]
    _one_line(capsys, code, argv, *fragments)
    assert not (tiny / "run").exists()


def test_image_folder_errors_name_the_file(tiny, capsys):
    _image_tree(tiny / "images")
    odd = tiny / "images" / "train" / "c1" / "odd.png"
    named = "images/train/c1/odd.png"  # As the user named the folder: data.dir=images.
    odd.write_bytes(tf.io.encode_png(np.zeros((16, 8, 3), np.uint8)).numpy())
    argv = ["train", "tiny.yaml", "--workdir", "run", "--set", "data.source=folder", "--set",
            "data.dir=images", "--set", "imbalance=null"]
    _one_line(capsys, 1, argv, named, "16x8x3", "8x8x3", "data.image_size")
    odd.write_bytes(b"\x89PNG truncated")
    message = _one_line(capsys, 1, argv, f"Cannot read image {named}: Unknown image file format")
    assert "{{" not in message and "[Op:" not in message
    odd.unlink()
    _one_line(capsys, 1, argv[:4] + ["--set", "data.source=folder", "--set", "data.dir=nowhere"],
              "Data folder not found", "nowhere")
    assert not (tiny / "run").exists()


def test_run_directory_dead_ends_and_runtime_failures(tiny, capsys):
    _one_line(capsys, 1, ["train", "tiny.yaml", "--workdir", "run", "--resume"],
              "nothing to resume", "run")
    assert not (tiny / "run").exists()
    # A non-finite loss: one line, no results.json; the corrected command runs elsewhere.
    _one_line(capsys, 1, ["train", "tiny.yaml", "--workdir", "nan", "--set",
                          "train.lr_values=[1.0e+30]"], "non-finite loss", "train.lr_values")
    assert not (tiny / "nan" / "results.json").exists()
    code, _ = _tfimb(capsys, "train", "tiny.yaml", "--workdir", "run")
    assert code == 0
    _one_line(capsys, 1, ["train", "tiny.yaml", "--workdir", "run"], "finished run", "never")
    # An unfinished run whose every checkpoint is unreadable.
    shutil.copytree(tiny / "run", tiny / "broken")
    (tiny / "broken" / "results.json").unlink()
    for path in (tiny / "broken" / "checkpoints").glob("ckpt-*"):
        path.write_bytes(b"corrupt")
    _one_line(capsys, 1, ["train", "tiny.yaml", "--workdir", "broken", "--resume"],
              "checkpoint", "broken")
    _one_line(capsys, 1, ["train", "tiny.yaml", "--workdir", "broken", "--resume", "--set",
                          "train.seed=1"], "config differs", "--resume refused")

    # Commands given the wrong kind of run, and bad arguments.
    _one_line(capsys, 1, ["flow", "evaluate", "run"], "run holds a classifier run", "not a flow")
    _one_line(capsys, 1, ["export", "nan"], "no finished run", "nan")
    _one_line(capsys, 2, ["export", "run", "--version", "0"], "`--version`", "Received")
    assert not (tiny / "saved_models" / "run" / "0").exists()
    (tiny / "bad").mkdir()
    (tiny / "bad" / "results.json").write_text('{"accuracy": ')
    message = _one_line(capsys, 1, ["report", "run", "bad", "--output", "report"],
                        "bad/results.json", "reported 1 of 2 runs")
    assert "run/results.json" not in message
    assert (tiny / "report" / "table.md").exists()  # The readable run is reported.


def test_flow_commands_check_their_arguments(tiny, capsys):
    code, _ = _tfimb(capsys, "flow", "train", "flow.yaml", "--workdir", "flow")
    assert code == 0
    for args, fragment in ((["--temperature", "nan"], "temperature"),
                           (["--temperature", "-1"], "temperature"),
                           (["--n", "0"], "`n`")):
        _one_line(capsys, 2, ["flow", "sample", "flow", *args], fragment, "Received")
    assert not list((tiny / "flow").glob("samples_T*"))
    _one_line(capsys, 2, ["flow", "train", "flow.yaml", "--workdir", "flow2", "--set",
                          "train.learning_rate=-1"], "train.learning_rate")
    assert not (tiny / "flow2").exists()
