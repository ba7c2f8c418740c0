import argparse
import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tfimb import config
from tfimb.experiments import distributed_search, trials, tune

SMOKE = pathlib.Path(__file__).parents[1] / "configs" / "search" / "smoke.yaml"


# ResNet-8 instead of the smoke search's ResNet-20: the same code paths, half the time.
SMALL = ["model.name=resnet8"]


def _smoke(*overrides):
    with open(SMOKE) as f:
        return config.resolve_search(yaml.safe_load(f), SMALL + list(overrides))


def _tune_command(workdir, *args):
    return [sys.executable, "-m", "tfimb", "tune", str(SMOKE), "--workdir", str(workdir),
            "--set", "search.space.beta=[0.9]", "--set", SMALL[0], *args]


def _run(command, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def _trials(workdir):
    with open(pathlib.Path(workdir) / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("override, message", [
    ("search.space.beta=[0.9, 1.0]", "Expected 0 <= beta < 1. Received: search.space.beta=1.0"),
    ("search.space.loss=[class_balanced_softmax, nope]", "search.space.loss='nope'"),
    ("search.space.gamma=[]", "Expected a non-empty list of distinct values"),
    ("search.space.beta=[0.9, 0.9]", "search.space.beta=[0.9, 0.9]"),
    ("search.space.gamma=[-1.0]", "Expected gamma >= 0"),
    ("search.algorithm=annealing", "search.algorithm='annealing'"),
    ("search.objective=all_accuracy", "Expected a validation metric"),
    ("search.max_trials=0", "search.max_trials=0"),
    ("search.spaces=1", "Unknown key `search.spaces`. Valid keys: algorithm"),
])
def test_bad_search_configs_are_clear_errors(override, message):
    with pytest.raises(config.ConfigError, match=None) as error:
        _smoke(override)
    assert message in str(error.value)


def test_a_search_needs_a_validation_split_and_buildable_losses():
    cfg, search = _smoke("data.validation_per_class=0")
    with pytest.raises(config.ConfigError, match="never on the test split"):
        trials.validate(cfg, search)
    cfg, search = _smoke("search.space.loss=[ldam]")
    with pytest.raises(config.ConfigError, match="search.space.loss 'ldam'.*model.head"):
        trials.validate(cfg, search)
    with pytest.raises(config.ConfigError, match="Missing section `search`"):
        config.resolve_search({"train": {"epochs": 2}})


def test_trial_config_keeps_schedule_fractions_and_compatible_loss_arguments():
    cfg, search = _smoke("train.epochs=25", "train.lr_values=[0.1, 0.01, 0.001]",
                         "train.lr_boundaries=[15, 20]", "search.epochs_per_trial=5",
                         "loss={name: class_balanced_focal, beta: 0.5, gamma: 3.0, "
                         "normalization: num_classes}")
    trial = trials.trial_config(cfg, search, {"name": "class_balanced_softmax", "beta": 0.99})
    assert trial.train.epochs == 5 and trial.train.lr_boundaries == [3, 4]
    assert trial.loss.name == "class_balanced_softmax"
    assert trial.loss.options == {"normalization": "num_classes", "beta": 0.99}
    # One epoch per trial: boundaries stay increasing (the later steps are never reached).
    _, short = _smoke("train.epochs=25", "train.lr_values=[0.1, 0.01, 0.001]",
                      "train.lr_boundaries=[15, 20]", "search.epochs_per_trial=1")
    assert trials.trial_config(cfg, short, {"name": "focal", "gamma": 1.0}).train.lr_boundaries \
        == [1, 2]


def test_best_config_trains_on_the_full_training_data():
    cfg, _ = _smoke()
    best = trials.best_config(cfg, {"loss": "class_balanced_focal", "beta": 0.9, "gamma": 2.0})
    assert best.data.validation_per_class == 0
    assert best.loss.name == "class_balanced_focal"
    assert best.loss.options == {"beta": 0.9, "gamma": 2.0}
    assert best.train.epochs == cfg.train.epochs
    softmax = trials.best_config(cfg, {"loss": "class_balanced_softmax", "beta": 0.9,
                                     "gamma": None})
    assert softmax.loss.options == {"beta": 0.9}


def test_trial_summary_takes_the_best_epoch():
    class History:
        history = {"val_all_accuracy": [0.2, 0.5, 0.4], "val_loss": [3.0, 2.0, 2.5],
                   "loss": [1.0, 0.8, 0.7]}

    metrics = tune._summarize([History()], "val_all_accuracy", "max", 12.5)
    assert metrics["val_all_accuracy"] == 0.5 and metrics["val_loss"] == 2.0
    assert metrics["epochs"] == 3 and metrics["seconds"] == 12.5
    assert tune._summarize(History(), "val_loss", "min", 1.0)["loss"] == 0.8
    with pytest.raises(trials.SearchError, match="val_minority_accuracy"):
        tune._summarize(History(), "val_minority_accuracy", "max", 1.0)


def test_distributed_arguments():
    assert distributed_search.parse_address("--chief", "10.0.0.2:8000") == ("10.0.0.2", 8000)
    for bad in ("10.0.0.2", "host:0", ":80", "host:http"):
        with pytest.raises(ValueError, match="Invalid value for argument `--chief`"):
            distributed_search.parse_address("--chief", bad)
    with pytest.raises(distributed_search.LaunchError, match="--worker-id"):
        distributed_search.set_environment(worker="127.0.0.1:8000")
    with pytest.raises(distributed_search.LaunchError, match="only with --worker"):
        distributed_search.set_environment(worker_id=1)
    cfg, search = _smoke()
    args = argparse.Namespace(local_workers=0, config=str(SMOKE), set=[])
    with pytest.raises(distributed_search.LaunchError, match="--local-workers=0"):
        distributed_search.run_local(args, "unused", cfg, search)


def _wait_for_completed_trial(workdir, process, timeout=300, trial="trial_00"):
    deadline = time.monotonic() + timeout
    path = pathlib.Path(workdir) / "tuner" / trial / "trial.json"
    while time.monotonic() < deadline:
        if path.exists() and json.loads(path.read_text())["status"] == "COMPLETED":
            return
        assert process.poll() is None, "the search ended before it could be interrupted"
        time.sleep(0.5)
    raise AssertionError("no trial completed in time")


@pytest.mark.slow
def test_search_resumes_after_a_kill_extends_refuses_a_changed_config_and_trains_the_winner(
        tmp_path):
    # Grid: class-balanced softmax (no gamma) and focal with gamma 1 and 2 -> 3 trials; the
    # search first runs 2 of them (max_trials=2, trial ids "0", "1"), then is extended to 3.
    workdir = tmp_path / "search"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    two = ("--set", "search.max_trials=2")
    process = subprocess.Popen(_tune_command(workdir, *two), cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_completed_trial(workdir, process, trial="trial_0")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    first = json.loads((workdir / "tuner" / "trial_0" / "trial.json").read_text())

    result = _run(_tune_command(workdir, *two), tmp_path)  # Resumed: the second trial runs.
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["status"] for r in _trials(workdir)] == ["COMPLETED"] * 2
    for change, message in (("search.space.gamma=[1.0]", "config differs"),
                            ("search.max_trials=1", "extended, not shortened")):
        cfg, search = _smoke("search.space.beta=[0.9]", "search.max_trials=2", change)
        with pytest.raises(trials.SearchError, match=message):
            trials.check_workdir(workdir, cfg, search)

    result = _run(_tune_command(workdir, "--set", "search.max_trials=3", "--final"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max_trials: 3" in (workdir / "search.yaml").read_text()
    rows = _trials(workdir)
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    values = {(r["loss"], r["gamma"]) for r in rows}
    assert values == {("class_balanced_softmax", ""), ("class_balanced_focal", "1.0"),
                      ("class_balanced_focal", "2.0")}  # gamma only for the focal loss
    # The finished trials were not repeated.
    assert json.loads((workdir / "tuner" / "trial_0" / "trial.json").read_text()) == first
    for row in rows:
        assert int(row["epochs"]) == 2 and float(row["seconds"]) > 0
    # Trials train through tfimb train's loop: each trial's directory has its history, one row
    # per epoch; its checkpoints are removed once the trial has finished.
    trial_dirs = sorted((workdir / "tuner").glob("trial_*"))
    assert [d.name for d in trial_dirs] == ["trial_0", "trial_1", "trial_2"]
    for trial_dir in trial_dirs:
        history = (trial_dir / "history.csv").read_text().splitlines()
        assert len(history) == 3 and "val_all_accuracy" in history[0]
        assert not (trial_dir / "checkpoints").exists()

    best = max(rows, key=lambda r: float(r["val_all_accuracy"]))
    winner = config.load(workdir / "best.yaml")
    assert winner.loss.name == best["loss"] and winner.data.validation_per_class == 0
    assert winner.loss.options["beta"] == 0.9
    results = json.loads((workdir / "final" / "results.json").read_text())
    assert results["epochs_completed"] == 2
    assert results["config"]["loss"]["name"] == best["loss"]
    assert (workdir / "results.md").read_text().count("| COMPLETED |") == 3
    assert "| training data / loss |" in result.stdout  # The final run's table.


@pytest.mark.slow
def test_distributed_search_with_two_local_workers(tmp_path):
    workdir = tmp_path / "search"
    result = _run(_tune_command(workdir, "--set", "search.space.gamma=[1.0]",
                                "--local-workers", "2"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    rows = _trials(workdir)
    assert sorted(r["loss"] for r in rows) == ["class_balanced_focal", "class_balanced_softmax"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    trained = [(workdir / "logs" / f"worker{i}.log").read_text().count("Epoch 1/2")
               for i in range(2)]
    assert sum(trained) == 2  # Each trial trained once, by one of the workers.
    assert {p.name for p in (workdir / "tuner").glob("tuner*.json")} == {"tuner0.json",
                                                                         "tuner1.json"}
    assert np.isfinite(float(rows[0]["val_all_accuracy"]))
