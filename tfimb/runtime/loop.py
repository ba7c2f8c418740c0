"""One training loop for every strategy: one device, several local devices, several hosts.

Keras 3 `fit` fails under `MultiWorkerMirroredStrategy` on TF 2.21 (keras#20585), so `tfimb
train`, `tfimb flow train` and `tfimb tune`'s trials train through this loop whatever the
strategy. Each step runs the
model's own `train_step` (the loss, metrics, loss scaling and gradient all-reduce `fit` would
use) through `strategy.run`, `steps_per_execution` steps per `tf.function` call; Keras callbacks
(learning-rate schedule, progress bar, user callbacks) are driven as `fit` drives them.

Fault tolerance:

* Checkpoints (`run_dir/checkpoints/ckpt-N`, the newest `keep`): model and optimizer variables,
  the completed epochs and the step within the epoch. One at every epoch end and, with
  `checkpoint_every=K`, every K steps. Under several workers every worker writes (saving may
  need collectives) but only the chief keeps its copy; the others write to a temporary folder
  and delete it, so `run_dir` must be on storage that all workers share.
* Restore tries the newest checkpoint first; an unreadable one (partial or corrupt) is reported
  on stderr, naming it, and the previous one is used.
* `history.csv` is rewritten atomically, by the chief, with an epoch's row (its metrics and
  `epoch_seconds`, the epoch's wall time with evaluation) before that epoch's checkpoint; on restore, rows of epochs after the checkpoint are dropped (those epochs train
  again), so the history always matches the weights. The epoch order of the data is a function
  of (seed, epoch), so a resumed epoch sees the same batches; a mid-epoch restore skips the
  batches already trained; a mid-epoch checkpoint also holds the training metrics' running
  state, so the epoch's history row is the one an uninterrupted run writes.
* Preemption (`tfimb.runtime.preemption`): on SIGTERM or SIGINT the loop checkpoints the
  current step after the step (or evaluation) under way and raises `Preempted`; under several
  workers TensorFlow's `PreemptionCheckpointHandler` picks the step.
* A checkpoint that cannot be written (a full disk, no permission) raises `CheckpointError`
  naming it and the cause, after deleting its partial files: the previous one stays the newest.
"""

from __future__ import annotations

import csv
import io
import math
import pathlib
import re
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import keras
import tensorflow as tf

from tfimb._checks import PathLike
from tfimb.errors import TfimbError
from tfimb.runtime import preemption, rundir

CHECKPOINTS = "checkpoints"
HISTORY = "history.csv"


class CheckpointError(TfimbError, RuntimeError):
    """No checkpoint of a run directory could be restored, or one could not be written."""


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """(is_chief, worker index) of this process under `strategy` ((True, 0) on one host)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True, 0
    resolver = strategy.cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    index = int(resolver.task_id or 0)
    if resolver.task_type == "chief":
        return True, 0
    return (not has_chief and index == 0), index


def checkpoint_paths(directory: PathLike) -> list[str]:
    """Checkpoint prefixes in `directory`, newest first (from the files, not the state file,
    which a crash may leave pointing at a checkpoint that was never completed)."""
    numbers = []
    for path in pathlib.Path(directory).glob("ckpt-*.index"):
        match = re.fullmatch(r"ckpt-(\d+)\.index", path.name)
        if match:
            numbers.append(int(match.group(1)))
    return [str(pathlib.Path(directory) / f"ckpt-{n}") for n in sorted(numbers, reverse=True)]


class History:
    """`history.csv`: one row per completed epoch, rewritten atomically by the chief."""

    def __init__(self, path: PathLike, writable: bool) -> None:
        self.path, self.writable = pathlib.Path(path), writable
        self.rows: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [dict(row) for row in csv.DictReader(f)]

    def truncate(self, epochs: int) -> None:
        """Keep the rows of epochs 0 .. epochs-1 (those the restored checkpoint has seen)."""
        kept = [row for row in self.rows if int(row["epoch"]) < epochs]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._write()

    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        self.rows.append({"epoch": str(epoch), **{k: repr(float(v)) for k, v in logs.items()}})
        self._write()

    def _write(self):
        if not self.writable:
            return
        keys = sorted({k for row in self.rows for k in row} - {"epoch"})
        out = io.StringIO()
        writer = csv.DictWriter(out, ["epoch"] + keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        rundir.atomic_write(self.path, out.getvalue())


def _floats(values):
    return {k: float(v) for k, v in values.items()}


def _metric_variables(model: keras.Model) -> dict[str, Any]:
    """The training metrics' state variables by path (`loss/total`, ...)."""
    return {variable.path: variable for variable in model.metrics_variables}


def _zeros_like(data: Any) -> Any:
    """A batch of one example of zeros shaped as `data`'s elements (for building metrics)."""
    if isinstance(data, PerWorkerData):
        data = data.make(tf.distribute.InputContext(), 0)
    return tf.nest.map_structure(
        lambda spec: tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype),
        data.element_spec)


class TrainingLoop:
    """Trains a compiled Keras model under `strategy` with checkpoints in `run_dir`.

    The model must have been built and compiled under `strategy.scope()`; the loop builds the
    optimizer's variables there too. Call `fit`. `train_seconds` / `train_images` measure the training part
    of the epochs run by this call (evaluation excluded).
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, run_dir: PathLike,
                 steps_per_execution: int = 1, checkpoint_every: int | None = None,
                 keep: int = 3) -> None:
        self.model, self.strategy = model, strategy
        self.run_dir = pathlib.Path(run_dir)
        self.steps_per_execution = int(steps_per_execution)
        self.checkpoint_every = checkpoint_every
        self.is_chief, self.worker = worker_role(strategy)
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                              epoch=self.epoch, step=self.step)
        self.directory = self.run_dir / CHECKPOINTS
        self.keep = keep
        self.train_seconds, self.train_images = 0.0, 0
        self._restored: str | None = None  # The checkpoint `restore` read.
        # PreemptionCheckpointHandler's check (several workers), during fit.
        self._handler: Callable[[], None] | None = None
        self._stop = preemption.StopRequests()  # The signals received, in fit.
        self._position, self.steps_per_epoch = (0, 0), 0
        self._train_function: Callable[..., Any] | None = None
        self._test_function: Callable[..., Any] | None = None

    # -- checkpoints ---------------------------------------------------------------------------

    def restore(self) -> tuple[int, int]:
        """Restore the newest readable checkpoint; return (epoch, step) to continue from."""
        if not self.is_chief:
            # This worker's scratch checkpoint, left if it was killed while writing it (each
            # worker owns its own: no other process writes there).
            shutil.rmtree(self.directory / f".worker-{self.worker}.tmp", ignore_errors=True)
        paths = checkpoint_paths(self.directory)
        reasons = []
        for i, path in enumerate(paths):
            try:
                # expect_partial: a mid-epoch checkpoint also holds the metrics' state, which
                # `_restore_metrics` reads (TensorFlow would warn about it at exit).
                self.checkpoint.read(path).assert_existing_objects_matched().expect_partial()
                self._restored = path
            except Exception as error:  # Unreadable in any way (truncated, garbled, stale).
                text = str(error).strip()
                reasons.append(text.splitlines()[0][:300] if text else type(error).__name__)
                if i + 1 < len(paths):  # Training goes on from an earlier one: say so.
                    print(f"tfimb: checkpoint {path} is unreadable ({reasons[-1]}); using the "
                          f"previous one, {paths[i + 1]}.", file=sys.stderr, flush=True)
                continue
            return int(self.epoch.numpy()), int(self.step.numpy())
        if paths:
            raise CheckpointError(
                f"No checkpoint in {self.directory} could be restored ({len(paths)} tried; "
                f"newest {paths[0]}: {reasons[0]}). Move the directory away to train the run "
                "from epoch 0.")
        return 0, 0

    def save(self, epoch: int, step: int) -> str:
        """Checkpoint (epoch, step) and return its path: the chief keeps it as ckpt-N, N one
        past the newest on disk (so numbers keep increasing after a fallback restore), and
        prunes to the newest `keep` once it is complete; other workers write to a temporary
        folder and delete it. Mid-epoch (step > 0) it holds the training metrics' state too."""
        self.epoch.assign(epoch)
        self.step.assign(step)
        checkpoint = self.checkpoint
        if step:
            checkpoint = tf.train.Checkpoint(
                model=self.model, optimizer=self.model.optimizer, epoch=self.epoch,
                step=self.step, metrics=_metric_variables(self.model))
        if not self.is_chief:
            scratch = self.directory / f".worker-{self.worker}.tmp"
            checkpoint.write(str(scratch / "ckpt"))
            shutil.rmtree(scratch, ignore_errors=True)
            return str(scratch / "ckpt")
        paths = checkpoint_paths(self.directory)
        number = int(paths[0].rsplit("-", 1)[1]) + 1 if paths else 1
        path = str(self.directory / f"ckpt-{number}")
        try:
            checkpoint.write(path)
        except Exception as error:
            cause = rundir.write_failure(error)
            if cause is None:
                raise
            for partial in pathlib.Path(path).parent.glob(pathlib.Path(path).name + "[._]*"):
                if partial.is_dir():  # TensorFlow's `ckpt-N_temp` folder of shards.
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink(missing_ok=True)
            previous = f"; {paths[0]} is the newest complete one" if paths else ""
            raise CheckpointError(f"cannot write checkpoint {path}: {cause}{previous}. Free "
                                  "space (or fix the permission), then --resume continues."
                                  ) from None
        for old in paths[self.keep - 1:]:
            for file in pathlib.Path(old).parent.glob(pathlib.Path(old).name + ".*"):
                file.unlink(missing_ok=True)
        return path

    def _restore_metrics(self, data: Any) -> None:
        """After a mid-epoch restore: the training metrics' state saved with the checkpoint
        (built first from the data's shapes, since Keras builds them at the first step)."""
        for metric in self.model.metrics:
            metric.reset_state()
        if self._restored is None:
            return
        reader = tf.train.load_checkpoint(self._restored)
        if not any(key.startswith("metrics/") for key in reader.get_variable_to_shape_map()):
            return  # Written before metrics were saved: the epoch's metrics restart.
        if len(_metric_variables(self.model)) <= 2:  # Only the loss tracker is built.
            with self.strategy.scope():
                self.model._symbolic_build(data_batch=_zeros_like(data))
        tf.train.Checkpoint(metrics=_metric_variables(self.model)).read(
            self._restored).expect_partial()

    # -- compiled functions --------------------------------------------------------------------

    def retrace(self) -> None:
        """Forget the compiled step functions (call when a graph constant of the loss changes)."""
        self._train_function = self._test_function = None

    def run_steps(self, iterator: Iterator[Any], steps: int) -> None:
        """`steps` training steps from a distributed iterator (no callbacks, no checkpoint)."""
        if self._train_function is None:
            model, strategy = self.model, self.strategy

            @tf.function
            def train_function(iterator, steps):
                def step(i):
                    strategy.run(model.train_step, args=(next(iterator),))
                    return (i + 1,)

                # An explicit loop: it must not depend on AutoGraph converting this function.
                tf.while_loop(lambda i: i < steps, step, (tf.constant(0, tf.int64),))

            self._train_function = train_function
        self._train_function(iterator, tf.constant(steps, tf.int64))

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        """Metrics of `dataset` (reset first), every batch through `test_step`."""
        model, strategy = self.model, self.strategy
        for metric in model.metrics:
            metric.reset_state()
        distributed = strategy.experimental_distribute_dataset(_data_sharded(dataset))
        if self._test_function is None:
            self._test_function = tf.function(
                lambda batch: strategy.run(model.test_step, args=(batch,)),
                reduce_retracing=True)
        for batch in distributed:
            self._test_function(batch)
        return _floats(model.get_metrics_result())

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, train_data: Callable[[int], tf.data.Dataset | PerWorkerData],
            steps_per_epoch: int,
            epochs: int, global_batch_size: int, eval_data: tf.data.Dataset | None = None,
            callbacks: Iterable[keras.callbacks.Callback] = (), verbose: int = 2,
            stop_on_nan: bool = True,
            evaluates: Callable[[int], bool] | None = None) -> list[dict[str, str]]:
        """Train epochs up to `epochs`, continuing from the newest checkpoint.

        `train_data(epoch)` returns that epoch's dataset of global batches (the same on every
        worker; each takes its share of every batch). `evaluates(epoch)` says whether `eval_data`
        is evaluated after that epoch (default: every epoch); the `val_*` cells of the other
        epochs' history rows stay empty. Returns the history rows.
        """
        start_epoch, start_step = self.restore()
        history = History(self.run_dir / HISTORY, self.is_chief)
        history.truncate(start_epoch)
        writers = _summary_writers(self.run_dir / "logs") if self.is_chief else None
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_progbar=verbose != 0, model=self.model, verbose=verbose,
            epochs=epochs, steps=steps_per_epoch)
        self.model.stop_training = False
        self.steps_per_epoch = steps_per_epoch
        multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        with preemption.deferred(multi_worker) as self._stop:
            if multi_worker:
                self._handler = preemption.multi_worker_handler(
                    self.strategy, lambda: self.save(*self._position), self._preempted)
            callback_list.on_train_begin()
            for epoch in range(start_epoch, epochs):
                epoch_start = time.perf_counter()
                callback_list.on_epoch_begin(epoch)
                first = start_step if epoch == start_epoch else 0
                data = train_data(epoch)
                if first:
                    self._restore_metrics(data)
                logs = self._train_epoch(data, epoch, first, steps_per_epoch,
                                         global_batch_size, callback_list, verbose, stop_on_nan)
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                    self.model.optimizer.learning_rate))
                if eval_data is not None and (evaluates is None or evaluates(epoch)):
                    logs.update({f"val_{k}": v for k, v in self.evaluate(eval_data).items()})
                callback_list.on_epoch_end(epoch, logs)
                # Wall time of the epoch: input, training steps, evaluation and callbacks.
                history.append(epoch, {**logs,
                                       "epoch_seconds": time.perf_counter() - epoch_start})
                if writers:
                    _write_summaries(writers, epoch, logs)
                path = self.save(epoch + 1, 0)
                if self._stop.requested:
                    self._preempted(self._stop.signum, path, epoch + 1, 0)
                if self.model.stop_training:
                    break
            callback_list.on_train_end()
            if self._stop.requested:  # A signal after the last check: stop before results.
                self._preempted(self._stop.signum, checkpoint_paths(self.directory)[0],
                                *self._restored_position())
        self._handler = None
        return history.rows

    def _restored_position(self) -> tuple[int, int]:
        return int(self.epoch.numpy()), int(self.step.numpy())

    def _preempted(self, signum: int, path: str, epoch: int | None = None,
                   step: int | None = None) -> None:
        epoch, step = (epoch, step) if epoch is not None else self._position
        raise preemption.Preempted(signum, path, epoch, step or 0, self.steps_per_epoch)

    def _after_steps(self, epoch: int, step: int, saved: str | None = None) -> None:
        """At a step boundary: checkpoint (unless `saved` already holds this step) and stop if
        a signal asked for it."""
        self._position = (epoch, step)
        if self._handler is not None:
            self._handler()  # Saves and raises at the step the workers agree on.
        elif self._stop.requested:
            self._preempted(self._stop.signum, saved or self.save(epoch, step), epoch, step)

    def _check_finite(self, logs, epoch):
        """Raise before a checkpoint of non-finite weights could be written."""
        if not math.isfinite(logs.get("loss", 0.0)):
            raise FloatingPointError(
                f"Training stopped on a non-finite loss ({logs['loss']}) in epoch {epoch + 1}; "
                f"{self.directory} keeps the last checkpoint written before it and no "
                "results.json is written. Lower the learning rate (train.lr_values; flows: "
                "train.learning_rate) or check "
                "the loss arguments, and train in a new --workdir.")

    def _train_epoch(self, dataset, epoch, first, steps, global_batch_size, callbacks, verbose,
                     stop_on_nan):
        if not first:  # A mid-epoch resume keeps the state `_restore_metrics` read.
            for metric in self.model.metrics:
                metric.reset_state()
        if isinstance(dataset, PerWorkerData):
            iterator = iter(self.strategy.distribute_datasets_from_function(
                dataset.skipping(first, _local_replicas(self.strategy))))
        else:
            if first:
                dataset = dataset.skip(first)
            iterator = iter(self.strategy.experimental_distribute_dataset(
                _data_sharded(dataset)))
        start, step = time.perf_counter(), first
        while step < steps:
            n = min(self.steps_per_execution, steps - step)
            if self.checkpoint_every:
                n = min(n, self.checkpoint_every - step % self.checkpoint_every)
            callbacks.on_train_batch_begin(step)
            self.run_steps(iterator, n)
            step += n
            callbacks.on_train_batch_end(step - 1, _floats(self.model.get_metrics_result())
                                         if verbose == 1 else None)
            saved = None
            if self.checkpoint_every and step % self.checkpoint_every == 0 and step < steps:
                if stop_on_nan:
                    self._check_finite(_floats(self.model.get_metrics_result()), epoch)
                saved = self.save(epoch, step)
            if step < steps:
                if stop_on_nan and self._stop.requested:
                    self._check_finite(_floats(self.model.get_metrics_result()), epoch)
                self._after_steps(epoch, step, saved)
        logs = _floats(self.model.get_metrics_result())
        if stop_on_nan:
            self._check_finite(logs, epoch)
        self.train_seconds += time.perf_counter() - start
        self.train_images += (steps - first) * global_batch_size
        return logs


class PerWorkerData:
    """An epoch's training data built by each worker for itself: `make(context, first)`
    returns the worker's dataset of per-replica batches from its `first` batch on (`context`:
    `tf.distribute.InputContext`), read from its own share of the examples, for
    `strategy.distribute_datasets_from_function`. A step's replicas take consecutive batches,
    so the union of a step's batches is the global batch when each worker's share is every
    num_workers-th example of the epoch's order."""

    def __init__(self, make: Callable[[tf.distribute.InputContext, int], tf.data.Dataset]
                 ) -> None:
        self.make = make

    def skipping(self, steps: int, replicas_per_worker: int
                 ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
        """The worker's data without the batches of the first `steps` steps (a mid-epoch
        resume)."""
        return lambda context: self.make(context, steps * replicas_per_worker)


def evaluation_batch_size(n: int, batch_size: int, replicas: int) -> int:
    """A batch size for evaluating n examples on `replicas` replicas with every example kept:
    `batch_size`, or the largest smaller one whose last partial batch still gives each replica
    an example (an empty replica batch fails oneDNN's convolutions on CPUs)."""
    if replicas <= 1 or n <= replicas:
        return batch_size
    for size in range(min(batch_size, n), replicas - 1, -1):
        if n % size == 0 or n % size >= replicas:
            return size
    return batch_size


def _local_replicas(strategy):
    """Replicas on this worker (the default strategy has one and no device list)."""
    try:
        return len(strategy.extended.worker_devices)
    except RuntimeError:
        return 1


def _data_sharded(dataset):
    """Workers share each global batch (the first worker the first part, ...) instead of
    reading files of their own: every worker builds the same dataset from the same seed."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _summary_writers(log_dir):
    return {"train": tf.summary.create_file_writer(str(log_dir / "train")),
            "validation": tf.summary.create_file_writer(str(log_dir / "validation"))}


def _write_summaries(writers, epoch, logs):
    """Keras TensorBoard's layout: `epoch_<metric>` under train/ and validation/."""
    for key, value in logs.items():
        split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
        with writers[split].as_default():
            tf.summary.scalar(f"epoch_{name}", value, step=epoch)
    for writer in writers.values():
        writer.flush()
