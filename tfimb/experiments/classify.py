"""`tfimb train`: the imbalanced-classification experiment end to end, under tf.distribute.

Optimisation matches the published protocol (PyTorch-style SGD):

* SGD with momentum (`train.momentum`) and a piecewise-constant learning rate by epoch
  (`train.lr_values` between `train.lr_boundaries`; optional linear warm-up). Where the rate
  changes, the velocity is rescaled so that the steps stay PyTorch's (`EpochLearningRate`).
* Weight decay is coupled L2, as PyTorch's `SGD(weight_decay=wd)`: every weight (convolution
  and dense kernels, biases, batch-norm scales and offsets) carries a `wd / 2 * ||w||^2`
  penalty, whose gradient `wd * w` joins the data gradient before momentum. (Keras'
  `SGD(weight_decay=...)` is decoupled and would not pass the decay through momentum.)

A run directory holds `config.yaml` (resolved), `counts.json`, `history.csv`, `logs/`
(TensorBoard), `checkpoints/` (every epoch), `model.keras`, `plots/` and `results.json`, the last
written atomically once the run has finished. `--resume` continues from the last checkpoint
and refuses a changed config; a finished run is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Callable, Iterable, Literal, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfimb import _checks, catalog, fused_batch_norm
from tfimb._checks import PathLike
from tfimb import config as config_lib
from tfimb import data as data_lib
from tfimb.data import service as data_service
from tfimb import metrics as metrics_lib
from tfimb import posthoc as posthoc_lib
from tfimb import losses, models
from tfimb.experiments import report
from tfimb.runtime import devices, rundir
from tfimb.config.classify import ExperimentConfig
from tfimb.runtime import loop as loop_lib
from tfimb.runtime import run as run_lib

RESULTS = rundir.RESULTS
RunDirError = rundir.RunDirError


# ---------------------------------------------------------------------------------------------
# Model, loss, optimiser, callbacks.


def build_model(cfg: ExperimentConfig, dataset: data_lib.Dataset) -> keras.Model:
    """Normalisation (training-set channel statistics) + the configured ResNet."""
    shape = dataset.image_shape
    assert shape is not None  # Set by data.load (or from in-memory images).
    mean, variance = data_lib.split_statistics(dataset.train, cfg.data.seed)
    backbone = models.get(cfg.model.name, num_classes=dataset.num_classes, input_shape=shape,
                          head=cfg.model.head, weights=cfg.model.weights,
                          shortcut=cfg.model.shortcut, padding=cfg.model.padding)
    if cfg.loss.name in catalog.SIGMOID and cfg.model.head == "dense":
        # Cui et al.: one-vs-all sigmoids start at the prior 1/C per class (bias -log(C - 1)),
        # so that the C - 1 negatives of every example do not swamp the first steps.
        bias = backbone.get_layer("logits").bias
        bias.assign(np.full(bias.shape, -np.log(max(dataset.num_classes - 1, 1)), "float32"))
    inputs = keras.Input(shape, name="image")
    normalized = keras.layers.Normalization(mean=mean.tolist(), variance=variance.tolist(),
                                            name="normalize")(inputs)
    model = keras.Model(inputs, backbone(normalized), name=cfg.model.name)
    if cfg.distribute.sync_batch_norm:
        # Read at call time: batch moments over all replicas, computed as E[x^2] - E[x]^2
        # (also on one device, which then trains the weights N workers train).
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    elif keras.backend.backend() == "tensorflow":
        model = fused_batch_norm.fuse_batch_norms(model)
    return model


def save_model(model: keras.Model, path: PathLike) -> None:
    """`model.keras` with Keras' own batch-norm layers (loads without tfimb), atomically."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    try:
        fused_batch_norm.unfuse_batch_norms(model).save(tmp)
        os.replace(tmp, path)
    except BaseException:  # A full disk, an interruption: no partial file left behind.
        tmp.unlink(missing_ok=True)
        raise


class WeightDecayModel(keras.Model):
    """Wraps a model so that its training loss includes `decay / 2 * ||w||^2` on every weight
    (but those whose path ends with one of `exclude`)."""
    def __init__(self, inner: keras.Model, decay: float, exclude: Iterable[str] = ()) -> None:
        super().__init__(name=inner.name)
        self.inner = inner
        self.decay = decay
        self.exclude = tuple(exclude)

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        if training and self.decay:
            penalty = sum(keras.ops.sum(keras.ops.square(keras.ops.cast(w, "float32")))
                          for w in self.inner.trainable_weights
                          if not w.path.endswith(self.exclude))
            self.add_loss(0.5 * self.decay * penalty)
        return self.inner(inputs, training=training)


def regularized(model: keras.Model, weight_decay: float,
                exclude: Iterable[str] = ()) -> WeightDecayModel:
    """Wrap the model so that its loss includes the coupled L2 penalty on every weight (but
    those whose path ends with one of `exclude`)."""
    return WeightDecayModel(model, weight_decay, exclude)


def make_loss(cfg: ExperimentConfig, counts: Sequence[int] | np.ndarray) -> keras.losses.Loss:
    kwargs = dict(cfg.loss.options)
    if cfg.loss.needs_counts:
        kwargs["counts"] = [int(c) for c in counts]
    return losses.get(cfg.loss.name, **kwargs)


def build_trainer(cfg: ExperimentConfig, dataset: data_lib.Dataset, minority: Sequence[int]
                  ) -> tuple[keras.Model, WeightDecayModel, keras.losses.Loss]:
    """(model, trainer, loss): the classifier, its weight-decay wrapper compiled with SGD, the
    configured loss (counts from `dataset`) and the group metrics. Call under the strategy's
    scope."""
    model = build_model(cfg, dataset)
    loss = make_loss(cfg, dataset.counts)
    # Cui et al. leave the sigmoid classifier's last bias (started at -log(C - 1)) undecayed.
    exclude = ("logits/bias",) if cfg.loss.name in catalog.SIGMOID else ()
    return model, compiled_trainer(cfg, model, loss, dataset, minority, exclude), loss


def compiled_trainer(cfg: ExperimentConfig, model: keras.Model, loss: keras.losses.Loss,
                     dataset: data_lib.Dataset, minority: Sequence[int],
                     exclude: Iterable[str] = ()) -> WeightDecayModel:
    """`model` in its weight-decay wrapper (coupled L2 on its trainable weights but those
    whose path ends with one of `exclude`), built and compiled with SGD, `loss` and the group
    metrics (all-class accuracy; majority and minority when there is a minority)."""
    metrics = [metrics_lib.GroupAccuracy(list(range(dataset.num_classes)), name="all_accuracy")]
    if minority:
        metrics = metrics_lib.group_accuracies(minority, dataset.num_classes)
    trainer = regularized(model, cfg.train.weight_decay, exclude)
    trainer(np.zeros((1,) + tuple(dataset.image_shape or ()), np.float32))  # Build.
    trainer.compile(
        optimizer=keras.optimizers.SGD(learning_rate(0, cfg), momentum=cfg.train.momentum),
        loss=loss, metrics=metrics, steps_per_execution=cfg.train.steps_per_execution)
    return trainer


def schedule_callbacks(cfg: ExperimentConfig, loss: keras.losses.Loss,
                       retrace: Callable[[], None] | None = None
                       ) -> list[keras.callbacks.Callback]:
    """The learning-rate schedule, and LDAM's deferred re-weighting when configured.

    `retrace()` forgets the compiled train step when the loss's weights change (default: the
    Keras model's own train function, for `fit`)."""
    callbacks: list[keras.callbacks.Callback] = [
        EpochLearningRate(lambda epoch: learning_rate(epoch, cfg))]
    if cfg.loss.drw_epoch is not None:
        callbacks.append(DeferredReweighting(loss, cfg.loss.drw_epoch, cfg.loss.drw_beta,
                                             retrace))
    return callbacks


def learning_rate(epoch: int, cfg: ExperimentConfig) -> float:
    """Learning rate for a 0-based epoch after an optional linear warm-up: piecewise constant
    (`step`), or `lr_values[0] * (1 + cos(pi * k / K)) / 2` at the k-th of the K epochs after
    the warm-up (`cosine`)."""
    t = cfg.train
    if t.lr_schedule == "cosine":
        k, total = epoch - t.warmup_epochs, t.epochs - t.warmup_epochs
        lr = t.lr_values[0] * 0.5 * (1.0 + math.cos(math.pi * k / total))
    else:
        lr = t.lr_values[int(np.searchsorted(t.lr_boundaries, epoch, side="right"))]
    if epoch < t.warmup_epochs:
        lr = t.lr_values[0] * (epoch + 1) / t.warmup_epochs
    return float(lr)


def minority_classes(cfg: ExperimentConfig, counts: Sequence[int] | np.ndarray) -> list[int]:
    """Classes of the minority group: configured, else the rarer half of a long tail."""
    if cfg.evaluation.minority is not None:
        return config_lib.engine.check(_checks.check_classes, "evaluation.minority",
                                       cfg.evaluation.minority, len(counts))
    if cfg.imbalance is not None and cfg.imbalance.minority:
        return list(cfg.imbalance.minority)
    counts = np.asarray(counts)
    if counts.min() == counts.max():
        return []
    return np.flatnonzero(counts < np.sqrt(counts.max() * counts.min())).tolist()


class EpochLearningRate(keras.callbacks.Callback):
    """Sets the learning rate `schedule(epoch)` at each epoch's start and keeps SGD's momentum
    PyTorch's across a change of rate.

    Keras' SGD keeps a velocity already scaled by the rate (`v = m v - lr g; w += v`), PyTorch's
    (the published protocols') the gradients' sum (`v = m v + g; w -= lr v`). They take the same
    steps while the rate holds and part where it changes: after a drop from 0.1 to 0.001, Keras'
    velocity keeps moving the weights at the old rate's scale for some ten steps, which the new,
    hundred-times smaller gradient steps cannot turn. (CIFAR-10-LT ce_r100 at 2b3329e, the first
    epoch at lr 0.001: training loss 0.39 -> 0.53, test accuracy 62.6% -> 59.5%; then slow
    recovery.) Multiplying the velocity by `new / old` when the rate changes ("momentum
    correction": Goyal et al. 2017, "Accurate, Large Minibatch SGD", arXiv:1706.02677, sec. 3)
    makes every Keras step equal PyTorch's. Other optimizers keep no rate-scaled state.
    """
    def __init__(self, schedule: Callable[[int], float]) -> None:
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        optimizer = self.model.optimizer
        sgd = getattr(optimizer, "inner_optimizer", optimizer)  # Under loss scaling, too.
        # Compared as the float32 the optimizer holds (0.1 reads back as 0.10000000149).
        old = np.float32(keras.ops.convert_to_numpy(optimizer.learning_rate))
        new = np.float32(self.schedule(epoch))
        if new == old:
            return
        optimizer.learning_rate = float(new)
        if isinstance(sgd, keras.optimizers.SGD) and sgd.momentum and old > 0:
            ratio = float(new / old)
            for velocity in getattr(sgd, "momentums", None) or ():
                velocity.assign(velocity * ratio)


class DeferredReweighting(keras.callbacks.Callback):
    """Class-balanced weights (beta) on `loss` from `start_epoch` on (Cao et al.'s DRW).

    Re-traces the train function when the weights change, since they are graph constants.
    """
    def __init__(self, loss: losses.LDAM, start_epoch: int, beta: float,
                 retrace: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.loss, self.start_epoch, self.beta = loss, start_epoch, beta
        self.retrace = retrace

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        wanted = self.beta if epoch >= self.start_epoch else None
        if self.loss.beta != wanted:
            self.loss.set_beta(wanted)
            if self.retrace is not None:
                self.retrace()
            else:
                self.model.make_train_function(force=True)


# ---------------------------------------------------------------------------------------------
# The run.


def group_accuracy(matrix: np.ndarray, classes: Iterable[int]) -> float | None:
    classes = list(classes)
    total = matrix[classes].sum()
    return float(np.trace(matrix[np.ix_(classes, classes)]) / total) if total else None


def best_evaluated_epoch(rows: Sequence[dict[str, Any]], split: str) -> dict[str, Any] | None:
    """The evaluated epoch of highest all-class accuracy in the history rows, or None.

    Reference code for CIFAR-10-LT (Cao et al.'s) reports this statistic on the test split
    ("best Prec@1"); results.json keeps it beside the final epoch's accuracies, so that each
    published figure is compared with its own statistic.
    """
    best: dict[str, Any] | None = None
    for row in rows:
        value = row.get("val_all_accuracy")
        if value in (None, "") or not np.isfinite(float(value)):
            continue
        if best is None or float(value) > best["accuracy"]["all"]:
            best = {"epoch": int(row["epoch"]) + 1, "split": split, "accuracy": {
                group: float(row[f"val_{group}_accuracy"])
                if row.get(f"val_{group}_accuracy") not in (None, "") else None
                for group in ("majority", "minority", "all")}}
    return best


def predict(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Scores of a dataset of (images, labels) batches, on this process (no collectives)."""
    step = tf.function(lambda x: keras.ops.cast(model(x, training=False), "float32"),
                       reduce_retracing=True)
    return np.concatenate([step(x).numpy() for x, _ in dataset])


def steps_per_epoch(n: int, batch: int, replicas: int) -> int:
    """Training steps per epoch of n images: under several replicas the last partial batch is
    dropped (a remainder smaller than the replica count would leave a replica an empty batch)."""
    steps = n // batch if replicas > 1 else -(-n // batch)
    if steps < 1:
        raise data_lib.DataError(
            f"Invalid value for key `train.batch_size`. Expected at most the {n} training "
            f"images under {replicas} replicas (which drop the last partial batch). "
            f"Received: {batch}")
    return steps


def calibration(logits: np.ndarray, labels: np.ndarray,
                activation: Literal["softmax", "sigmoid"] = "softmax", scale: float = 1.0,
                bins: int = 15) -> dict[str, Any]:
    """results.json's `calibration`: the top label's expected calibration error over `bins`
    equal-width confidence bins, the negative log-likelihood and the reliability diagram's
    bins (`null` confidence and accuracy where a bin is empty), from the test logits.

    The probabilities are the ones the loss trained: `softmax(scale * z)` for the softmax
    losses (`scale` is LDAM's s, which multiplies its cosine logits inside the loss; 1
    otherwise). A sigmoid loss trains C one-vs-all sigmoids, each an estimate of
    P(y = c | x): the top label's confidence is `sigmoid(max_c z_c)`, and the NLL is that of
    the sigmoids normalised to sum to 1, `-log(sigmoid(z_y) / sum_c sigmoid(z_c))`, a proper
    score over the C classes (the raw `-log sigmoid(z_y)` would score 0 for sigmoids that
    are all 1). `probabilities` names which.
    """
    z = np.asarray(logits, np.float64) * scale
    if activation == "sigmoid":
        log_sigmoid = -np.logaddexp(0.0, -z)
        scores, from_logits, log_scores = np.exp(log_sigmoid), False, log_sigmoid
    else:
        scores, from_logits, log_scores = z, True, z
    diagram = metrics_lib.reliability(labels, scores, bins, from_logits)
    return {
        "ece": metrics_lib.expected_calibration_error(labels, scores, bins, from_logits),
        "bins": bins,
        "nll": metrics_lib.negative_log_likelihood(labels, log_scores),
        "probabilities": activation,
        "reliability": {"count": diagram["count"].tolist(), **{
            key: [None if np.isnan(value) else float(value) for value in diagram[key]]
            for key in ("confidence", "accuracy")}},
    }


def posthoc_adjustment(logits: np.ndarray, labels: np.ndarray, counts: Sequence[int] | np.ndarray,
                       minority: Sequence[int],
                       validation: tuple[np.ndarray, np.ndarray] | None = None,
                       scale: float = 1.0) -> dict[str, Any]:
    """results.json's `posthoc`: Menon et al.'s post-hoc logit adjustment of the test logits,
    predictions `argmax(z - tau * log pi)` with `pi = counts / sum(counts)` the training
    priors, and their group and per-class test accuracies.

    tau is chosen on `validation`, the (logits, labels) of the run's validation split, by
    `tfimb.posthoc.choose_tau` (best balanced accuracy over 0, 0.25, ..., 3; a tie to the tau
    closest to 1), never on the test split, whose accuracy it would overstate. A run without
    a validation split takes Menon et al.'s tau = 1 (the Bayes rule for the balanced error)
    and records `chosen_on: null`. The logits are the ones the loss trained, LDAM's cosines
    times `scale`; the sigmoid losses' logits are adjusted the same way (the argmax of
    `z_c - tau * log pi_c`, which is the argmax of the adjusted one-vs-all sigmoids).

    Reference: Menon et al., "Long-tail learning via logit adjustment", ICLR 2021.
    """
    num_classes = len(counts)
    pi = posthoc_lib.priors(counts)
    by_tau: dict[str, float] | None = None
    if validation is not None:
        tau, accuracies = posthoc_lib.choose_tau(np.asarray(validation[0], np.float64) * scale,
                                                 validation[1], counts)
        by_tau = {str(float(t)): accuracy for t, accuracy in accuracies.items()}
    else:
        tau = posthoc_lib.DEFAULT_TAU
    adjusted = keras.ops.convert_to_numpy(posthoc_lib.adjust_logits(
        np.asarray(logits, np.float64) * scale, counts, tau))
    matrix = metrics_lib.confusion_matrix(labels, adjusted, num_classes)
    majority = [c for c in range(num_classes) if c not in minority]
    return {
        "tau": float(tau),
        "chosen_on": "validation" if validation is not None else None,
        "pi": pi.tolist(),
        "accuracy": {"majority": group_accuracy(matrix, majority) if minority else None,
                     "minority": group_accuracy(matrix, minority) if minority else None,
                     "all": group_accuracy(matrix, range(num_classes))},
        "per_class_accuracy": [  # null for a class without test examples: strict JSON.
            None if np.isnan(value) else float(value)
            for value in metrics_lib.per_class_accuracy(labels, adjusted, num_classes)],
        "validation_accuracy_by_tau": by_tau,
    }


class ClassifierExperiment(run_lib.Experiment):
    """`tfimb train`'s experiment for the run skeleton: data with its imbalance, the
    normalising ResNet with coupled weight decay, the configured loss and group metrics; after
    training, the test split's confusion matrix and group accuracies, `model.keras` and the
    training curves. `tfimb tune` builds one on a loaded `dataset` (and its `minority`
    classes) for its trials' data."""
    dataset: data_lib.Dataset  # From `prepare`, or given to the constructor.
    minority: list[int]

    def __init__(self, dataset: data_lib.Dataset | None = None,
                 minority: list[int] | None = None) -> None:
        if dataset is not None:
            self.dataset, self.minority = dataset, list(minority or [])
        self._results: dict[str, Any] | None = None  # Set by `results`, drawn by `save`.

    def dump_config(self, cfg: ExperimentConfig) -> str:
        return config_lib.dump(cfg)

    def precision(self, cfg: ExperimentConfig) -> str:
        return devices.resolve_precision(cfg.mixed_precision)

    def prepare(self, cfg: ExperimentConfig) -> None:
        if cfg.data.service:
            data_service.check_reachable(cfg.data.service)
        self.dataset = data_lib.load(cfg.data, cfg.imbalance)
        counts = self.dataset.counts
        if np.any(counts == 0):
            raise data_lib.DataError(f"Classes {np.flatnonzero(counts == 0).tolist()} have no "
                                     "training image after subsampling.")
        self.minority = minority_classes(cfg, counts)
        steps_per_epoch(len(self.dataset.train), cfg.train.batch_size, 1)

    def start(self, cfg: ExperimentConfig, run_dir: pathlib.Path) -> None:
        rundir.atomic_write(run_dir / "counts.json", json.dumps(
            {"class_names": self.dataset.class_names,
             "counts": self.dataset.counts.tolist()}, indent=1))

    def build(self, cfg: ExperimentConfig) -> keras.Model:
        self.model, trainer, self.loss = build_trainer(cfg, self.dataset, self.minority)
        return trainer

    def steps_per_epoch(self, cfg: ExperimentConfig, replicas: int) -> int:
        return steps_per_epoch(len(self.dataset.train), cfg.train.batch_size, replicas)

    def train_data(self, cfg: ExperimentConfig, epoch: int, replicas: int
                   ) -> tf.data.Dataset | loop_lib.PerWorkerData:
        """The epoch's global batches from memory; streamed, each worker reads its own share
        of every global batch (per-replica batches, in the same order). Under class-aware
        `data.sampling` the epoch's examples are drawn first (`tfimb.data.sampling`), by
        (seed, epoch), the same in every process."""
        train = data_lib.resample(self.dataset.train, cfg.data.sampling, cfg.data.seed, epoch,
                                  cfg.train.epochs, self.dataset.num_classes)
        if not self.dataset.streamed:
            return data_lib.pipeline(train, cfg.train.batch_size, training=True,
                                     seed=cfg.data.seed, augment=cfg.data.augment,
                                     drop_remainder=replicas > 1, epoch=epoch)

        def worker_share(context: tf.distribute.InputContext, first: int) -> tf.data.Dataset:
            batch = context.get_per_replica_batch_size(cfg.train.batch_size)
            shards, shard = context.num_input_pipelines, context.input_pipeline_id
            if cfg.data.service:  # The same batches, built by the service's workers.
                return data_service.in_order(data_lib.indexed_epoch(
                    train, batch, cfg.data.seed, epoch, cfg.data.augment,
                    replicas > 1, shards, shard), cfg.data.service, first)
            return data_lib.pipeline(
                train, batch, training=True, seed=cfg.data.seed,
                augment=cfg.data.augment, drop_remainder=replicas > 1, epoch=epoch,
                num_shards=shards, shard_index=shard).skip(first)

        return loop_lib.PerWorkerData(worker_share)

    def eval_data(self, cfg: ExperimentConfig, replicas: int) -> tf.data.Dataset:
        split = self.dataset.evaluation
        batch = loop_lib.evaluation_batch_size(len(split), cfg.train.batch_size, replicas)
        return data_lib.pipeline(split, batch, training=False)

    def callbacks(self, cfg: ExperimentConfig, loop: loop_lib.TrainingLoop,
                  run_dir: pathlib.Path, is_chief: bool) -> list[keras.callbacks.Callback]:
        return schedule_callbacks(cfg, self.loss, loop.retrace)

    def evaluates(self, cfg: ExperimentConfig) -> Callable[[int], bool]:
        return lambda epoch: cfg.evaluation.evaluates(epoch, cfg.train.epochs)

    def results(self, cfg: ExperimentConfig, rows: list[dict[str, Any]],
                loop: loop_lib.TrainingLoop | None) -> dict[str, Any]:
        dataset, minority = self.dataset, self.minority
        scores = predict(self.model, data_lib.pipeline(dataset.test, 512, training=False))
        scale = self.loss.scale if isinstance(self.loss, losses.LDAM) else 1.0
        validation = None  # Post-hoc tau is chosen on the validation split, never the test.
        if len(dataset.validation):
            validation = (predict(self.model, data_lib.pipeline(dataset.validation, 512,
                                                                training=False)),
                          dataset.validation.labels)
        matrix = metrics_lib.confusion_matrix(dataset.test.labels, scores, dataset.num_classes)
        majority = [c for c in range(dataset.num_classes) if c not in minority]
        self._results = {
            "accuracy": {"majority": group_accuracy(matrix, majority) if minority else None,
                         "minority": group_accuracy(matrix, minority) if minority else None,
                         "all": group_accuracy(matrix, range(dataset.num_classes))},
            "best_evaluated_epoch": best_evaluated_epoch(
                rows, "validation" if len(dataset.validation) else "test"),
            # Many- (> 100 training images), medium- (20-100) and few-shot (< 20) classes.
            "shot_accuracy": {shot: group_accuracy(matrix, classes) if classes else None
                              for shot, classes in metrics_lib.shot_groups(
                                  dataset.counts).items()},
            "per_class_accuracy": metrics_lib.per_class_accuracy(
                dataset.test.labels, scores, dataset.num_classes).tolist(),
            "confusion_matrix": matrix.tolist(),
            "counts": dataset.counts.tolist(),
            "class_names": dataset.class_names,
            "minority_classes": minority,
            "calibration": calibration(
                scores, dataset.test.labels,
                "sigmoid" if cfg.loss.name in catalog.SIGMOID else "softmax", scale),
            "posthoc": posthoc_adjustment(scores, dataset.test.labels, dataset.counts, minority,
                                          validation, scale),
        }
        return self._results

    def save(self, cfg: ExperimentConfig, run_dir: pathlib.Path) -> None:
        save_model(self.model, run_dir / "model.keras")
        # results.json is written after `save`: the figures take the results just computed.
        report.plot_run(run_dir, self._results)


def load_run(run_dir: PathLike, overrides: Iterable[str] = ()
             ) -> tuple[ExperimentConfig, keras.Model]:
    """A finished run's config (its config.yaml, with `--set`-style `overrides` such as
    `data.dir=PATH` where the data lives elsewhere now) and its trained model (`model.keras`,
    which outputs logits): a model to evaluate, export or start a second stage from, in one
    call."""
    import yaml

    import tfimb

    run_dir = pathlib.Path(run_dir)
    for name in ("config.yaml", "model.keras"):
        if not (run_dir / name).is_file():
            raise RunDirError(f"{run_dir} has no {name}: expected the directory of a finished "
                              "`tfimb train` run (one run, not a folder of them).")
    cfg = config_lib.resolve(yaml.safe_load((run_dir / "config.yaml").read_text()), overrides)
    tfimb.register_all()  # model.keras may hold tfimb layers (the cosine head).
    return cfg, keras.saving.load_model(run_dir / "model.keras", compile=False)


def evaluate_run(run_dir: PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The results of a finished run's model recomputed from its data (`results.json`'s keys:
    group and per-class accuracy, the confusion matrix, calibration, post-hoc adjustment);
    they equal the recorded ones when the data is the run's."""
    cfg, model = load_run(run_dir, overrides)
    experiment = ClassifierExperiment()
    experiment.prepare(cfg)
    experiment.model, experiment.loss = model, make_loss(cfg, experiment.dataset.counts)
    rows = loop_lib.History(pathlib.Path(run_dir) / loop_lib.HISTORY, writable=False).rows
    return experiment.results(cfg, rows, None)


def run(cfg: ExperimentConfig, run_dir: PathLike, resume: bool = False,
        verbose: int | Literal["auto"] = "auto",
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, Any]:
    """Train, evaluate on the test split and write the run directory; returns the results.

    The run skeleton (`tfimb.runtime.run`) with `ClassifierExperiment`: every strategy trains
    through `tfimb.runtime.loop.TrainingLoop`; under several workers only the chief writes.
    `callbacks` are extra Keras callbacks (after tfimb's own)."""
    return run_lib.run(ClassifierExperiment(), cfg, run_dir, resume, verbose, callbacks)


def run_job(jobs: Sequence[tuple[ExperimentConfig, pathlib.Path]], resume: bool = False,
            announce: Callable[[str], Any] = print
            ) -> tuple[list[dict[str, Any]], int]:
    """Train a job of one run or several (a config's variants: `(cfg, run_dir)` pairs from
    `tfimb.config.resolve_variants`); return (every run's `{"dir", "results"}`, how many ran).

    A job of several runs is finished run by run: a finished run is kept (never retrained), an
    unfinished one resumes under `resume`, and under `resume` the runs that never started just
    start, so an interrupted job completes with --resume. `announce` gets one progress line per
    run."""
    several = len(jobs) > 1
    finished, ran = [], 0
    for cfg, run_dir in jobs:
        if several and (run_dir / RESULTS).exists():
            announce(f"== {run_dir}: finished earlier, kept")
            finished.append(report.load_run(run_dir))
            continue
        announce(f"== {run_dir}")
        results = run(cfg, run_dir,
                      resume=resume and (not several or (run_dir / "config.yaml").exists()))
        finished.append({"dir": run_dir, "results": results})
        ran += 1
    return finished, ran
