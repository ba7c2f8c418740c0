"""One run skeleton for every experiment: `tfimb train` and `tfimb flow train` run through
`run(experiment, cfg, run_dir)`. (Each trial of `tfimb tune` trains through the same
`TrainingLoop`, inside keras-tuner's trial, which owns its directory and records.)

The skeleton owns what every run shares: devices, strategy and precision; the worker role
(only the chief writes); the run directory and its resume rules; the seeds; the training loop
(`tfimb.runtime.loop.TrainingLoop`, checkpoints every epoch); and the results record, written
atomically once the run has finished (`results.json`). An experiment (a subclass of
`Experiment`) supplies only its data, model, metrics and files.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Sequence

import keras

from tfimb.runtime import devices, loop as loop_lib, rundir


class Experiment:
    """What a run needs from its experiment. `run` calls, in order: `precision`, `prepare`
    (load and check the data, before the run directory exists), `start` (chief: files such as
    counts.json), `build` (under the strategy's scope: the
    compiled Keras model to train), `steps_per_epoch`, `train_data` / `eval_data`,
    `callbacks`, `evaluates`, then after training `results` and (chief) `save`."""

    def dump_config(self, cfg: Any) -> str:
        raise NotImplementedError

    def dump_defaults(self, cfg: Any) -> str:
        """Every key of `cfg`'s config type at its default: on --resume, a key the run's
        config.yaml lacks (added to tfimb since) is accepted at this value."""
        return self.dump_config(type(cfg)())

    def seed(self, cfg: Any) -> int:
        return cfg.train.seed

    def precision(self, cfg: Any) -> str:
        """The Keras dtype policy of the run (default float32)."""
        return "float32"

    def prepare(self, cfg: Any) -> None:
        """Load the data and check everything it can tell (class indices, counts, batch size),
        before the run directory is created: write nothing here."""
        raise NotImplementedError

    def start(self, cfg: Any, run_dir: pathlib.Path) -> None:
        """Chief only, once the run directory exists: files describing the data."""

    def build(self, cfg: Any) -> keras.Model:
        raise NotImplementedError

    def steps_per_epoch(self, cfg: Any, replicas: int) -> int:
        raise NotImplementedError

    def train_data(self, cfg: Any, epoch: int, replicas: int) -> Any:
        raise NotImplementedError

    def eval_data(self, cfg: Any, replicas: int) -> Any:
        return None

    def callbacks(self, cfg: Any, loop: loop_lib.TrainingLoop, run_dir: pathlib.Path,
                  is_chief: bool) -> list:
        return []

    def evaluates(self, cfg: Any) -> Callable[[int], bool] | None:
        return None

    def fit_errors(self, error: Exception, run_dir: pathlib.Path) -> Exception | None:
        """A clearer error to raise instead of `error` from training, or None."""
        return None

    def results(self, cfg: Any, rows: list, loop: loop_lib.TrainingLoop) -> dict:
        raise NotImplementedError

    def save(self, cfg: Any, run_dir: pathlib.Path) -> None:
        """Chief only, after training, before results.json: model files, plots, samples."""


def run(experiment: Experiment, cfg: Any, run_dir: str | os.PathLike, resume: bool = False,
        verbose: Any = "auto", callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Train `experiment` per `cfg` in `run_dir` (resuming it if asked); return the results.

    Under several workers every process runs this; only the chief writes. `callbacks` are
    extra Keras callbacks (after the experiment's own)."""
    devices.configure_devices(cfg.distribute)
    strategy = devices.make_strategy(cfg.distribute)
    is_chief, _ = loop_lib.worker_role(strategy)
    run_dir = pathlib.Path(run_dir)
    config_text = experiment.dump_config(cfg)
    # One writer per run directory: the chief holds its lock until the run ends (the OS
    # releases it if the process dies). Workers share the chief's directory.
    lock = rundir.RunLock(run_dir).acquire() if is_chief else None
    started = False
    try:
        # Refusals first, then everything the data can tell, and only then the run directory:
        # a command that fails before training leaves nothing behind to refuse its correction.
        resuming = rundir.check_run_dir(run_dir, config_text,
                                        rundir.resume_mode(cfg.distribute, resume),
                                        experiment.dump_defaults(cfg))
        keras.utils.set_random_seed(experiment.seed(cfg))
        precision = experiment.precision(cfg)
        keras.mixed_precision.set_global_policy(precision)
        experiment.prepare(cfg)
        if is_chief:
            if not resuming:
                rundir.create_run_dir(run_dir, config_text)
            started = True
            experiment.start(cfg, run_dir)
        replicas = strategy.num_replicas_in_sync
        with strategy.scope():
            model = experiment.build(cfg)
        loop = loop_lib.TrainingLoop(model, strategy, run_dir, cfg.train.steps_per_execution,
                                     cfg.train.checkpoint_every)
        if verbose == "auto":
            verbose = 1 if os.isatty(1) else 2
        try:
            rows = loop.fit(
                lambda epoch: experiment.train_data(cfg, epoch, replicas),
                experiment.steps_per_epoch(cfg, replicas), cfg.train.epochs,
                cfg.train.batch_size, eval_data=experiment.eval_data(cfg, replicas),
                callbacks=experiment.callbacks(cfg, loop, run_dir, is_chief) + list(callbacks),
                verbose=verbose, evaluates=experiment.evaluates(cfg))
        except Exception as error:
            clearer = experiment.fit_errors(error, run_dir)
            if clearer is None:
                raise
            raise clearer from None
        results = {
            **experiment.results(cfg, rows, loop),
            "epochs_completed": len(rows),
            "train_seconds": loop.train_seconds,
            "images_per_second": (loop.train_images / loop.train_seconds
                                  if loop.train_seconds else None),
            "precision": precision,
            "replicas": replicas,
            "config": cfg.to_dict(),
        }
        if is_chief:
            experiment.save(cfg, run_dir)
            rundir.atomic_write(run_dir / rundir.RESULTS, json.dumps(results, indent=1))
        return results
    finally:
        keras.mixed_precision.set_global_policy("float32")
        if lock is not None:
            lock.release(remove_created=not started)
