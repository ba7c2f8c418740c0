"""`tfimb tune`: keras-tuner search of the loss, beta and gamma by validation accuracy.

A search config is a training config (see `tfimb.config`) plus a `search` section:

    search:
      algorithm: grid | random | bayesian | hyperband
      objective: val_all_accuracy          # maximised (accuracies) / minimised (losses)
      max_trials: 20
      epochs_per_trial: null               # null: train.epochs; hyperband: its max epochs
      early_stopping_patience: null        # stop a trial after N epochs without improvement
      space:
        loss: [class_balanced_softmax, class_balanced_focal]
        beta: [0.9, 0.99, 0.999, 0.9999]   # only for the class-balanced losses
        gamma: [0.5, 1.0, 2.0]             # only for the focal losses

Each trial trains the configured model through `tfimb train`'s loop
(`tfimb.runtime.loop.TrainingLoop`: same data pipeline, SGD, weight decay, learning-rate
schedule, group metrics and checkpoints, in the trial's directory; the checkpoints are removed
when the trial ends) and is scored on a validation split carved from the training data, the
same number of images per class (`data.validation_per_class`), so that all-group accuracy means
what it means on the balanced test split, which a search never touches. A trial whose loss
turns non-finite fails (FAILED in trials.csv) and the search goes on. A trial's score is its
best epoch's objective (keras-tuner's rule). With
`epochs_per_trial` below `train.epochs`, the learning-rate steps keep their fractions of training.

The work directory holds the tuner's own state (`tuner/`; the same command again resumes the
search and repeats no finished trial; a trial that was running when the search was killed runs
again; a larger `search.max_trials` extends a search, keeping its trials), `search.yaml` (the
resolved config; any other change is refused), `trials.csv`,
`results.md`, `best.yaml` (a runnable training config with the winner filled in, trained on the
full training data) and, with `--final`, `final/`: the run of best.yaml, evaluated once on the
test split. The checks before a search, trial configs and these reports:
`tfimb.experiments.trials`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import time
from typing import Any, Iterable, Literal, Sequence, cast

import keras
import keras_tuner
import tensorflow as tf
from keras_tuner.src.tuners import gridsearch

from tfimb import config as config_lib
from tfimb import data as data_lib
from tfimb._checks import PathLike
from tfimb.config import ExperimentConfig, SearchConfig
from tfimb.experiments import classify, report, trials
from tfimb.runtime import devices, rundir
from tfimb.runtime import loop as loop_lib

PROJECT = trials.PROJECT
ALGORITHM_CLASSES = {"grid": "GridSearch", "random": "RandomSearch",
                     "bayesian": "BayesianOptimization", "hyperband": "Hyperband"}


# ---------------------------------------------------------------------------------------------
# keras-tuner pieces.


class ImbalanceHyperModel(keras_tuner.HyperModel):
    """Builds `tfimb train`'s compiled model for the loss, beta and gamma that `hp` picks,
    and trains it through `tfimb train`'s loop (`tfimb.runtime.loop.TrainingLoop`: the
    same per-epoch data order and augmentation, learning-rate schedule and checkpoints, in
    the trial's own directory).

    `beta` is active only for the class-balanced losses and `gamma` only for the focal
    ones (keras-tuner conditional scopes on `loss`), so a grid never repeats a loss with
    an argument it ignores.
    """
    def __init__(self, cfg: ExperimentConfig, search: SearchConfig, dataset: data_lib.Dataset,
                 minority: Sequence[int], strategy: tf.distribute.Strategy) -> None:
        super().__init__(name="imbalance")
        self.cfg, self.search, self.dataset, self.minority = cfg, search, dataset, minority
        self.strategy = strategy
        # `tfimb train`'s experiment supplies each trial's data: the same pipelines, per-epoch
        # order and steps (its evaluation split is the validation split a search requires).
        self.experiment = classify.ClassifierExperiment(dataset, list(minority))
        self.trial_dir: pathlib.Path | None = None  # Set by the tuner before each trial.
        self._built: dict[int, tuple[ExperimentConfig, keras.losses.Loss]] = {}

    def declare(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        space = self.search.space
        spec = {"name": hp.Choice("loss", space.loss)}
        for key, takes in (("beta", config_lib.beta_losses), ("gamma",
                                                               config_lib.gamma_losses)):
            names = takes(space.loss)
            if names:
                with hp.conditional_scope("loss", names):
                    value = hp.Choice(key, getattr(space, key))
                if spec["name"] in names:
                    spec[key] = float(value)
        return spec

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        cfg = trials.trial_config(self.cfg, self.search, self.declare(hp))
        keras.utils.set_random_seed(cfg.train.seed)
        with self.strategy.scope():
            _, trainer, loss = classify.build_trainer(cfg, self.dataset, self.minority)
        self._built[id(trainer)] = (cfg, loss)
        return trainer

    def fit(self, hp: keras_tuner.HyperParameters, model: keras.Model, *args: Any,
            callbacks: Iterable[keras.callbacks.Callback] = (), epochs: int = 1,
            initial_epoch: int = 0, verbose: int = 2,
            **kwargs: Any) -> keras.callbacks.History:
        """Train epochs initial_epoch .. epochs - 1 (Hyperband continues a parent trial's
        weights, loaded by keras-tuner); returns a `keras.callbacks.History`. A non-finite
        loss fails the trial (keras-tuner records it as FAILED with this message)."""
        cfg, loss = self._built.pop(id(model))
        replicas = self.strategy.num_replicas_in_sync
        loop = loop_lib.TrainingLoop(model, self.strategy, cast(pathlib.Path, self.trial_dir),
                                     cfg.train.steps_per_execution, keep=1)
        if initial_epoch and not loop_lib.checkpoint_paths(loop.directory):
            loop.save(initial_epoch, 0)  # Start from the parent trial's epoch.
        fit_callbacks = list(callbacks) + classify.schedule_callbacks(cfg, loss, loop.retrace)
        if self.search.early_stopping_patience:
            fit_callbacks.append(keras.callbacks.EarlyStopping(
                self.search.objective, patience=self.search.early_stopping_patience,
                mode=self.search.direction))
        rows = loop.fit(
            lambda epoch: self.experiment.train_data(cfg, epoch, replicas),
            self.experiment.steps_per_epoch(cfg, replicas), epochs, cfg.train.batch_size,
            eval_data=self.experiment.eval_data(cfg, replicas), callbacks=fit_callbacks,
            verbose=verbose)
        history = keras.callbacks.History()
        keys = sorted({k for row in rows for k in row} - {"epoch", "epoch_seconds"})
        history.history = {k: [float(row[k]) for row in rows if row.get(k) not in ("", None)]
                           for k in keys}
        return history


def _summarize(histories, objective, direction, seconds):
    """A trial's metrics: its best epoch's logs plus `epochs` trained and `seconds` taken."""
    history = (histories[0] if isinstance(histories, list) else histories).history
    if objective not in history:
        raise trials.SearchError(f"The objective {objective!r} is not among the logged "
                                 f"metrics {sorted(history)}.")
    values = history[objective]
    pick = max if direction == "max" else min
    best = pick(range(len(values)), key=lambda i: values[i])
    metrics = {k: float(v[best]) for k, v in history.items() if len(v) == len(values)}
    metrics.update(epochs=float(len(values)), seconds=float(seconds))
    return metrics


def make_tuner(cfg: ExperimentConfig, search: SearchConfig, dataset: data_lib.Dataset,
               minority: Sequence[int], workdir: PathLike,
               strategy: tf.distribute.Strategy | None = None) -> keras_tuner.Tuner:
    """The keras-tuner tuner of `search.algorithm`, resuming any search found in `workdir`."""
    base = getattr(keras_tuner, ALGORITHM_CLASSES[search.algorithm])
    objective = keras_tuner.Objective(search.objective, search.direction)
    kwargs = dict(objective=objective, seed=search.seed, directory=str(workdir),
                  project_name=PROJECT, overwrite=False, distribution_strategy=strategy)
    # A trial whose loss turns non-finite fails (FAILED in trials.csv); any number of them may
    # occur in a row (a grid walks one loss's betas in turn), so they never end the search.
    kwargs.update(max_consecutive_failed_trials=None)
    if search.algorithm == "hyperband":
        kwargs.update(max_epochs=trials.trial_epochs(cfg, search), factor=3)
    else:
        kwargs.update(max_trials=search.max_trials)

    class Tuner(base):  # type: ignore[misc,valid-type]  # A class chosen at run time.
        def _get_tuner_fname(self):
            # keras-tuner names this file after the process's tuner id, and reloads the oracle
            # only when it exists: one name for whichever process owns the oracle (a lone
            # search or the chief) resumes the search whichever way it was started.
            name = self.tuner_id if is_worker() else "oracle_owner"
            return os.path.join(str(self.project_dir), f"{name}.json")

        def reload(self):
            super().reload()
            if isinstance(self.oracle, keras_tuner.oracles.GridSearchOracle):
                _restore_grid_order(self.oracle)

        def run_trial(self, trial, *args, **kwargs):
            start = time.perf_counter()
            self.hypermodel.trial_dir = pathlib.Path(self.get_trial_dir(trial.trial_id))
            histories = super().run_trial(trial, *args, **kwargs)
            # A finished trial needs no checkpoint to resume from (keras-tuner keeps its best
            # epoch's weights itself): free the disk a search of many trials would fill.
            shutil.rmtree(self.hypermodel.trial_dir / loop_lib.CHECKPOINTS, ignore_errors=True)
            return _summarize(histories, search.objective, search.direction,
                              time.perf_counter() - start)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if not is_worker():  # Workers' oracles live in the chief, which writes reports.
                trials.write_reports(workdir, cfg, search)


    hypermodel = ImbalanceHyperModel(cfg, search, dataset, minority,
                                     strategy or tf.distribute.get_strategy())
    return Tuner(hypermodel=hypermodel, **kwargs)


def _restore_grid_order(oracle):
    """keras-tuner 1.4's grid oracle does not save the order in which it walks the grid, so a
    resumed grid search stops early or fails (KeyError on a trial id). Rebuild it from the
    saved trials: every trial in grid order, and every trial queued to propose its successor
    (the oracle skips successors already tried)."""
    saved = [t for t in oracle.trials.values() if t.hyperparameters.values]
    saved.sort(key=functools.cmp_to_key(
        lambda a, b: oracle._compare(a.hyperparameters.values, b.hyperparameters.values)))
    oracle._ordered_ids = gridsearch.LinkedList()
    for trial in saved:
        oracle._ordered_ids.insert(trial.trial_id)
    oracle._populate_next = [t.trial_id for t in saved]


def is_worker() -> bool:
    return ("KERASTUNER_ORACLE_IP" in os.environ
            and "chief" not in os.environ.get("KERASTUNER_TUNER_ID", ""))


# ---------------------------------------------------------------------------------------------
# The search.


def run_search(cfg: ExperimentConfig, search: SearchConfig, workdir: PathLike,
               verbose: int | Literal["auto"] = "auto") -> dict[str, Any] | None:
    """Run (or resume) the search; write the reports; return the best trial or None.

    In a distributed search (KERASTUNER_* environment variables) the chief serves the oracle
    and writes the reports; workers only train trials and return None.
    """
    trials.validate(cfg, search)
    workdir = pathlib.Path(workdir)
    devices.configure_devices(cfg.distribute)
    # One search per directory: the chief holds its lock (the OS releases it with the process).
    lock = None if is_worker() else rundir.RunLock(workdir).acquire()

    keras.mixed_precision.set_global_policy(devices.resolve_precision(cfg.mixed_precision))
    try:
        dataset = data_lib.load(cfg.data, cfg.imbalance)
        minority = classify.minority_classes(cfg, dataset.counts)
        _check_objective(search, minority)
        trials.check_workdir(workdir, cfg, search)
        strategy = devices.make_strategy(cfg.distribute)
        distributed = strategy.num_replicas_in_sync > 1
        tuner = make_tuner(cfg, search, dataset, minority, workdir,
                           strategy if distributed else None)
        if verbose == "auto":
            verbose = 1 if os.isatty(1) else 2
        # The hypermodel builds each epoch's data itself (tfimb train's per-epoch order).
        tuner.search(epochs=trials.trial_epochs(cfg, search), verbose=verbose)
        if is_worker():
            return None
        return trials.write_reports(workdir, cfg, search)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        if lock is not None:
            lock.release()


def _check_objective(search, minority):
    names = {"val_loss", "val_all_accuracy"}
    if minority:
        names |= {"val_majority_accuracy", "val_minority_accuracy"}
    if search.objective not in names:
        raise config_lib.ConfigError(
            f"Invalid value for key `search.objective`. Expected one of {sorted(names)} for "
            f"this config. Received: search.objective={search.objective!r}")


def final(workdir: PathLike, verbose: int | Literal["auto"] = "auto") -> dict[str, Any]:
    """Train best.yaml's config into `workdir/final` (resuming it) and return its results."""
    workdir = pathlib.Path(workdir)
    path = workdir / "best.yaml"
    if not path.exists():
        raise trials.SearchError(f"No completed trial in {workdir}: nothing to retrain (no "
                                 "best.yaml).")
    winner = config_lib.load(path)
    run_dir = workdir / "final"
    if (run_dir / classify.RESULTS).exists():
        return report.load_run(run_dir)["results"]
    return classify.run(winner, run_dir, resume=(run_dir / "config.yaml").exists(),
                     verbose=verbose)
