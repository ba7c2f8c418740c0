"""The `tfimb` command's error path: anticipated failures are one line on stderr with exit
status 2 (usage, config) or 1 (run time); `--debug` shows the traceback."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # Each case is a fresh interpreter that imports TensorFlow.


def run_tfimb(*args, cwd):
    """`python -m tfimb ARGS` in a user's environment: no TensorFlow log variables set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFIMB_DEBUG")}
    return subprocess.run([sys.executable, "-m", "tfimb", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


def _one_line(result, code, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("tfimb: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_config_errors_exit_2_with_one_line(tmp_path):
    _one_line(run_tfimb("train", "no_such_config", cwd=tmp_path), 2, "config not found",
              "no_such_config")
    (tmp_path / "bad.yaml").write_text("train: {epochz: 3}\n")
    _one_line(run_tfimb("train", "bad.yaml", cwd=tmp_path), 2, "bad.yaml",
              "Unknown key `train.epochz`")
    (tmp_path / "tag.yaml").write_text("train: !!python/object:os.system {}\n")
    _one_line(run_tfimb("train", "tag.yaml", cwd=tmp_path), 2, "tag.yaml", "safe loader")
    _one_line(run_tfimb("train", "default", "--set", "train.epochs=[1", cwd=tmp_path), 2,
              "--set train.epochs", "[1")
    assert not (tmp_path / "runs").exists()  # Nothing written by a refused command.


def test_configs_are_checked_and_workers_launched_without_loading_tensorflow(tmp_path):
    """A refused config costs no TensorFlow start-up, and a `--local-workers` launcher, which
    only starts and watches its workers (a search's: after checking the search), holds no
    TensorFlow runtime of its own."""
    (tmp_path / "bad.yaml").write_text("train: {epochz: 3}\n")
    search = ROOT / "configs" / "search" / "cifar10_imbalanced_beta_gamma.yaml"
    script = f"""
import sys
from tfimb import cli
from tfimb.runtime import launch
launched = []
launch.run_local_workers = lambda argv, workers, log_dir: launched.append((argv, workers))
launch.supervise = lambda commands, log_dir, **kw: launched.append(len(commands))
codes = [cli.main(["train", "bad.yaml"]), cli.main(["flow", "train", "bad.yaml"]),
         cli.main(["train", "default", "--set", "model.name=vgg"]),
         cli.main(["train", "default", "--local-workers", "2"]),
         cli.main(["flow", "train", "flow_default", "--local-workers", "2"]),
         cli.main(["tune", {str(search)!r}, "--local-workers", "2", "--workdir", "s"]),
         cli.main(["tune", {str(search)!r}, "--chief", "no-port"])]
print(codes, launched[-1], "tensorflow" in sys.modules, "keras" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # The search's launcher started a chief and 2 workers (stubbed: no trial, so exit 1); a bad
    # --chief address is refused before TensorFlow loads.
    assert result.stdout.split("\n")[-2] == "[2, 2, 2, 0, 0, 1, 1] 3 False False", result.stdout
    assert "Unknown key `train.epochz`" in result.stderr and "model.name='vgg'" in result.stderr
    assert "no trial completed" in result.stderr
    assert "Invalid value for argument `--chief`" in result.stderr
    assert (tmp_path / "s" / "search.yaml").is_file()  # Checked and written before launching.


def test_runtime_errors_exit_1_quietly_and_debug_shows_the_traceback(tmp_path):
    args = ("train", "default", "--workdir", "w", "--set", "data.source=folder", "--set",
            f"data.dir={tmp_path / 'missing'}")
    result = run_tfimb(*args, cwd=tmp_path)
    _one_line(result, 1, "Data folder not found", "missing")
    assert "cuInit" not in result.stderr and "cuda" not in result.stderr.lower()
    debug = run_tfimb("--debug", *args, "--workdir", "w2", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert "DataError" in debug.stderr


def test_info_prints_to_stdout_only(tmp_path):
    result = run_tfimb("info", cwd=tmp_path)
    assert result.returncode == 0 and "oneDNN" in result.stdout
    assert result.stderr.strip() == "", result.stderr[-2000:]
