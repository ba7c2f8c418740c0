"""benchmarks/cifar10_lt_table.sh keeps a row's state in git across sessions: `save` copies an
unfinished run's newest checkpoint (or a finished run's results) into the folder of saved rows,
and a later call restores it and resumes. Checked here with a stand-in `tfimb` on PATH that
records its arguments and writes a finished run (no training)."""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

FAKE_TFIMB = """#!/usr/bin/env bash
echo "$@" >> "$TFIMB_CALLS"
if [ "$1" = train ]; then
  while [ $# -gt 0 ]; do [ "$1" = --workdir ] && dir=$2; shift; done
  mkdir -p "$dir"
  echo config > "$dir/config.yaml"; echo counts > "$dir/counts.json"
  echo history > "$dir/history.csv"; echo results > "$dir/results.json"
  echo model > "$dir/model.keras"
fi
"""


@pytest.fixture
def worktree(tmp_path):
    """A checkout holding only the script, a `tfimb` stand-in, and main's folder of saved rows."""
    tree = tmp_path / "worktree"
    (tree / "benchmarks").mkdir(parents=True)
    for script in ("cifar10_lt_table.sh", "cifar10_imbalanced_table.sh"):
        shutil.copy(ROOT / "benchmarks" / script, tree / "benchmarks")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tfimb").write_text(FAKE_TFIMB)
    (bin_dir / "tfimb").chmod(0o755)
    (tmp_path / "main").mkdir()
    return tree


def _table(tree, *args, script="cifar10_lt_table.sh"):
    env = dict(os.environ, PATH=f"{tree.parent / 'bin'}:{os.environ['PATH']}",
               TFIMB_DATA_DIR="/data/cifar10", TFIMB_CALLS=str(tree.parent / "calls.txt"))
    return subprocess.run(["bash", str(tree / "benchmarks" / script), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def _calls(tree):
    path = tree.parent / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_save_and_restore_go_through_the_from_folder(worktree):
    main = worktree.parent / "main"
    run = worktree / "runs" / "cifar10_lt" / "ce_r100"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "counts.json"):
        (run / name).write_text(name)
    (run / "history.csv").write_text("epoch\n0\n1\n2\n")
    for step in (2, 3):
        for suffix in ("index", "data-00000-of-00001"):
            (run / "checkpoints" / f"ckpt-{step}.{suffix}").write_text(str(step))

    saved = _table(worktree, "--from", str(main), "save", "ce_r100")
    assert saved.returncode == 0, saved.stderr
    assert "ce_r100: saved at 3 epochs" in saved.stdout
    kept = main / "ce_r100"
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == [
        "ckpt-3.data-00000-of-00001", "ckpt-3.index"]  # The newest only.
    assert (kept / "history.csv").read_text() == "epoch\n0\n1\n2\n"
    assert not (worktree / "benchmarks" / "results").exists()  # Nothing in the worktree's own.

    # A new session: the run directory is gone; the row resumes from main's saved state.
    shutil.rmtree(worktree / "runs")
    resumed = _table(worktree, "--from", str(main), "ce_r100")
    assert resumed.returncode == 0, resumed.stderr
    train = _calls(worktree)[0].split()
    assert train[:4] == ["train", "configs/cifar10_lt/ce_r100.yaml", "--workdir",
                         "runs/cifar10_lt/ce_r100"]
    assert "--resume" in train and "data.dir=/data/cifar10" in train
    assert "mixed_precision=float32" in train
    # Finished: its results replace the checkpoint in main's folder, and the table is drawn.
    assert (kept / "results.json").read_text() == "results\n"
    assert (kept / "model.keras").read_text() == "model\n"  # The model to start from.
    assert not (kept / "checkpoints").exists()
    assert _calls(worktree)[1].startswith(f"report {kept}")

    again = _table(worktree, "--from", str(main), "ce_r100")
    assert f"ce_r100: finished (in {main})" in again.stdout
    assert [c.split()[0] for c in _calls(worktree)] == ["train", "report", "report"]


def test_a_seed_row_trains_its_config_with_both_seeds_and_a_fresh_row_no_resume(worktree):
    result = _table(worktree, "ce_r100_seed1")
    assert result.returncode == 0, result.stderr
    train = _calls(worktree)[0].split()
    assert train[1] == "configs/cifar10_lt/ce_r100.yaml" and "--resume" not in train
    assert "train.seed=1" in train and "data.seed=1" in train
    assert (worktree / "benchmarks" / "results" / "cifar10_lt" / "ce_r100_seed1" /
            "results.json").is_file()  # Without --from: the checkout's own folder.


def test_a_missing_from_folder_is_one_line_naming_the_argument(worktree):
    result = _table(worktree, "--from", str(worktree / "nowhere"), "ce_r100")
    assert result.returncode == 2 and not _calls(worktree)
    assert result.stderr.count("\n") == 1
    assert "Invalid value for argument `--from`" in result.stderr
    assert "nowhere" in result.stderr


def test_the_imbalanced_table_trains_its_own_configs_at_auto_precision(worktree):
    main = worktree.parent / "main"
    result = _table(worktree, "--from", str(main), "imbalanced_ce",
                    script="cifar10_imbalanced_table.sh")
    assert result.returncode == 0, result.stderr
    train = _calls(worktree)[0].split()
    assert train[:4] == ["train", "configs/cifar10_imbalanced/imbalanced_ce.yaml", "--workdir",
                         "runs/cifar10_imbalanced/imbalanced_ce"]
    assert "mixed_precision=auto" in train and "train.checkpoint_every=70" in train
    assert "data.dir=/data/cifar10" in train and "--resume" not in train
    kept = main / "imbalanced_ce"
    assert sorted(p.name for p in kept.iterdir()) == [
        "config.yaml", "counts.json", "history.csv", "model.keras", "results.json"]
    assert _calls(worktree)[1].startswith(f"report {kept}")
