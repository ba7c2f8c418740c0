"""A search's checks, the training config each trial runs, and the reports a search writes.

`validate` and `check_workdir` refuse a search that cannot run (a loss the model cannot train, no
validation split, a changed config in a resumed work directory) before any data is read.

`trial_config` turns a trial's loss, beta and gamma into the training config it trains
(epochs per trial, learning-rate steps at the same fractions of training); `best_config` is the
winner as a full training config. `write_reports` reads keras-tuner's saved trials
(`WORKDIR/tuner/trial_*/trial.json`, readable by any process during or after a search) and
writes `trials.csv`, `results.md` (best first) and `best.yaml`, each atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Any, Mapping

import yaml

from tfimb import config as config_lib
from tfimb._checks import PathLike
from tfimb.config import ExperimentConfig, SearchConfig
from tfimb.errors import TfimbError
from tfimb.runtime import rundir

PROJECT = "tuner"  # keras-tuner's project folder in the work directory.
SEARCH_CONFIG = "search.yaml"  # The resolved search config, compared on resume.


class SearchError(TfimbError, RuntimeError):
    """A search that cannot run as asked (a changed config on resume, no usable objective)."""


# ---------------------------------------------------------------------------------------------
# Checks before a search starts (in the `--local-workers` launcher too, which loads no
# TensorFlow).


def validate(cfg: ExperimentConfig, search: SearchConfig) -> None:
    """Errors a search would meet late, raised before any data is read."""
    if cfg.data.validation_per_class < 1:
        raise config_lib.ConfigError(
            "Invalid value for key `data.validation_per_class`. Expected an integer >= 1 for a "
            "search: trials are scored on a validation split carved from the training data, "
            "never on the test split (e.g. --set data.validation_per_class=500). Received: "
            f"data.validation_per_class={cfg.data.validation_per_class}")
    check_space(cfg, search)


def check_space(cfg: ExperimentConfig, search: SearchConfig) -> None:
    """Every searched loss must make a valid training config (e.g. ldam needs model.head
    cosine): fail before the first trial, naming the key, rather than in every trial."""
    space = search.space
    for name in space.loss:
        spec: dict[str, Any] = {"name": name}
        if name in config_lib.beta_losses([name]):
            spec["beta"] = space.beta[0]
        if name in config_lib.gamma_losses([name]):
            spec["gamma"] = space.gamma[0]
        try:
            trial_config(cfg, search, spec)
        except config_lib.ConfigError as error:
            raise config_lib.ConfigError(f"search.space.loss {name!r}: {error}") from None


def check_workdir(workdir: PathLike, cfg: ExperimentConfig, search: SearchConfig) -> bool:
    """Write `search.yaml`, or check that a resumed search uses the same config; True when
    resuming. Only `search.max_trials` may change, and only upward: keras-tuner keeps the
    finished trials and runs new ones up to the new total (search.yaml records it)."""
    workdir = pathlib.Path(workdir)
    text = yaml.safe_dump({**cfg.to_dict(), "search": search.to_dict()}, sort_keys=False)
    path = workdir / SEARCH_CONFIG
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write(path, text)
        return False
    if path.read_text() == text:
        return True
    try:
        saved = yaml.safe_load(path.read_text())
        saved_max = saved["search"]["max_trials"]
        saved["search"]["max_trials"] = search.max_trials
    except (yaml.YAMLError, TypeError, KeyError):
        raise SearchError(f"{path} is not a search config tfimb wrote; pass another --workdir."
                          ) from None
    if saved != yaml.safe_load(text):
        raise SearchError(f"The config differs from the one of the search in {workdir} "
                          f"({path}). Run the same config and overrides to resume it (raising "
                          "only search.max_trials extends it), or pass another --workdir.")
    if search.max_trials < saved_max:
        raise SearchError(
            f"Invalid value for key `search.max_trials`. Expected >= {saved_max}, the search's "
            f"in {workdir} ({path}): a search can be extended, not shortened. Received: "
            f"search.max_trials={search.max_trials}")
    rundir.atomic_write(path, text)  # Extended: the search now runs up to the new total.
    return True


# ---------------------------------------------------------------------------------------------
# Trial configs.


def trial_epochs(cfg: ExperimentConfig, search: SearchConfig) -> int:
    return search.epochs_per_trial or cfg.train.epochs


def trial_config(cfg: ExperimentConfig, search: SearchConfig,
                 loss: Mapping[str, Any]) -> ExperimentConfig:
    """The training config of one trial: `loss` ({name, beta?, gamma?}) replaces the configured
    loss (keeping its other arguments that the new loss takes), the epochs are the trial's, and
    the learning-rate boundaries are rescaled to keep their fractions of training."""
    raw = _with_loss(cfg.to_dict(), loss)
    epochs = trial_epochs(cfg, search)
    if epochs != cfg.train.epochs:
        bounds: list[int] = []
        for b in cfg.train.lr_boundaries:
            b = max(1, round(b * epochs / cfg.train.epochs))
            bounds.append(max(b, bounds[-1] + 1) if bounds else b)
        raw["train"].update(epochs=epochs, lr_boundaries=bounds)
    return config_lib.from_dict(raw)


def best_config(cfg: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """The winner as a full training config: the trial's loss, all epochs, no validation split."""
    raw = _with_loss(cfg.to_dict(), loss_spec(values))
    raw["data"]["validation_per_class"] = 0
    return config_lib.from_dict(raw)


def _with_loss(raw, spec):
    """`raw` (a config dict) with the loss `spec`, keeping the configured loss's other
    arguments that the new loss takes (normalization, label_smoothing...)."""
    kept = {k: v for k, v in raw["loss"].items()
            if k not in ("name", "beta", "gamma", "drw_epoch", "drw_beta")
            and config_lib.losses_taking(k, [spec["name"]])}
    raw["loss"] = {**kept, **spec}
    return raw


def loss_spec(values: Mapping[str, Any]) -> dict[str, Any]:
    """{name, beta?, gamma?} from a trial's hyper-parameter values (inactive ones are absent)."""
    spec = {"name": values["loss"]}
    for key in ("beta", "gamma"):
        if values.get(key) is not None:
            spec[key] = float(values[key])
    return spec


# ---------------------------------------------------------------------------------------------
# Reports from the tuner's saved trials (readable by any process, during or after a search).


def load_trials(workdir: PathLike) -> list[dict[str, Any]]:
    """The saved trials as dicts: id, values, status, score, metrics (last values)."""
    trials = []
    # keras-tuner pads trial ids to the width of max_trials, so an extended search mixes
    # widths ("9", "10"): order by number.
    def number(path):
        trial_id = path.parent.name[len("trial_"):]
        return (int(trial_id), trial_id) if trial_id.isdigit() else (math.inf, trial_id)

    for path in sorted((pathlib.Path(workdir) / PROJECT).glob("trial_*/trial.json"), key=number):
        with open(path) as f:
            raw = json.load(f)
        metrics = {}
        for name, tracker in raw.get("metrics", {}).get("metrics", {}).items():
            observations = tracker.get("observations") or []
            if observations:
                metrics[name] = float(observations[-1]["value"][0])
        trials.append({"trial": raw["trial_id"], "values": raw["hyperparameters"]["values"],
                       "status": raw["status"], "score": raw.get("score"), "metrics": metrics})
    return trials


def _sorted_by_objective(trials, search):
    sign = -1 if search.direction == "max" else 1

    def key(trial):
        score = trial["score"]
        usable = trial["status"] == "COMPLETED" and score is not None and math.isfinite(score)
        return (0, sign * score) if usable else (1, 0.0)

    return sorted(trials, key=key)


def _columns(trials, search):
    extra = sorted({k for t in trials for k in t["metrics"]
                    if k.startswith("val_") and k != search.objective})
    return ["trial", "loss", "beta", "gamma", search.objective, *extra, "epochs", "seconds",
            "status"], extra


def _row(trial, search, extra):
    values, metrics = trial["values"], trial["metrics"]

    def number(x, digits=4):
        return "" if x is None else f"{x:.{digits}f}"

    return [trial["trial"], values.get("loss", ""), values.get("beta") or "",
            values.get("gamma") or "", number(trial["score"]),
            *(number(metrics.get(k)) for k in extra),
            "" if "epochs" not in metrics else int(metrics["epochs"]),
            number(metrics.get("seconds"), 1), trial["status"]]


def write_reports(workdir: PathLike, cfg: ExperimentConfig,
                  search: SearchConfig) -> dict[str, Any] | None:
    """trials.csv, results.md and best.yaml (when a trial has completed); atomic writes.

    Returns the best trial (a dict of `load_trials`) or None.
    """
    workdir = pathlib.Path(workdir)
    trials = load_trials(workdir)
    header, extra = _columns(trials, search)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for trial in trials:
        writer.writerow(_row(trial, search, extra))
    rundir.atomic_write(workdir / "trials.csv", buffer.getvalue())

    ranked = _sorted_by_objective(trials, search)
    lines = [f"# Search results: {search.algorithm}, objective {search.objective} "
             f"({'maximised' if search.direction == 'max' else 'minimised'})", "",
             f"{len(trials)} trials; best first. Scores are each trial's best epoch on the "
             "validation split carved from the training data.", "",
             "| rank | " + " | ".join(header) + " |",
             "| ---: | " + " | ".join("---" for _ in header) + " |"]
    for rank, trial in enumerate(ranked, 1):
        cells = [str(c) for c in _row(trial, search, extra)]
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    rundir.atomic_write(workdir / "results.md", "\n".join(lines) + "\n")

    best = ranked[0] if ranked and ranked[0]["status"] == "COMPLETED" else None
    if best is not None:
        winner = best_config(cfg, best["values"])
        header_lines = [
            f"# Best of the search in {workdir}: trial {best['trial']}, "
            f"{search.objective} = {best['score']:.4f} on the validation split.",
            f"# Hyper-parameters: {loss_spec(best['values'])}. Trained here on the full "
            "training data (no validation split).",
            f"# Command: tfimb train {workdir / 'best.yaml'}   (or: tfimb tune CONFIG --final)",
        ]
        rundir.atomic_write(workdir / "best.yaml",
                      "\n".join(header_lines) + "\n" + config_lib.dump(winner))
    return best
