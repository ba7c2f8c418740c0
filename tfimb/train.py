"""`tfimb train`: the imbalanced-classification experiment end to end, under tf.distribute.

Optimisation matches the published protocol (PyTorch-style SGD):

* SGD with momentum (`train.momentum`) and a piecewise-constant learning rate by epoch
  (`train.lr_values` between `train.lr_boundaries`; optional linear warm-up).
* Weight decay is coupled L2, as PyTorch's `SGD(weight_decay=wd)`: every weight (convolution
  and dense kernels, biases, batch-norm scales and offsets) carries a `wd / 2 * ||w||^2`
  penalty, whose gradient `wd * w` joins the data gradient before momentum. (Keras'
  `SGD(weight_decay=...)` is decoupled and would not pass the decay through momentum.)

A run directory holds `config.yaml` (resolved), `counts.json`, `history.csv`, `logs/`
(TensorBoard), `checkpoints/` (every epoch), `model.keras`, `plots/` and `results.json`, the last
written atomically once the run has finished. `--resume` continues from the last checkpoint
and refuses a changed config; a finished run is never overwritten.
"""

import json
import os
import pathlib

import keras
import numpy as np

from tfimb import _checks, catalog
from tfimb import config as config_lib
from tfimb import data as data_lib
from tfimb import metrics as metrics_lib
from tfimb import losses, models, report
from tfimb.runtime import devices, rundir
from tfimb.runtime import run as run_lib

RESULTS = rundir.RESULTS
RunDirError = rundir.RunDirError


# ---------------------------------------------------------------------------------------------
# Model, loss, optimiser, callbacks.


def build_model(cfg, dataset):
    """Normalisation (training-set channel statistics) + the configured ResNet."""
    shape = dataset.train.images.shape[1:]
    mean, variance = data_lib.channel_statistics(dataset.train.images)
    backbone = models.get(cfg.model.name, num_classes=dataset.num_classes, input_shape=shape,
                          head=cfg.model.head)
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
        from tfimb import fused_batch_norm  # One oneDNN kernel per batch norm and direction.

        model = fused_batch_norm.fuse_batch_norms(model)
    return model


def save_model(model, path):
    """`model.keras` with Keras' own batch-norm layers (loads without tfimb), atomically."""
    from tfimb import fused_batch_norm

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    fused_batch_norm.unfuse_batch_norms(model).save(tmp)
    os.replace(tmp, path)


class WeightDecayModel(keras.Model):
    """Wraps a model so that its training loss includes `decay / 2 * ||w||^2` on every weight
    (but those whose path ends with one of `exclude`)."""

    def __init__(self, inner, decay, exclude=()):
        super().__init__(name=inner.name)
        self.inner = inner
        self.decay = decay
        self.exclude = tuple(exclude)

    def call(self, inputs, training=False):
        if training and self.decay:
            penalty = sum(keras.ops.sum(keras.ops.square(keras.ops.cast(w, "float32")))
                          for w in self.inner.trainable_weights
                          if not w.path.endswith(self.exclude))
            self.add_loss(0.5 * self.decay * penalty)
        return self.inner(inputs, training=training)


def regularized(model, weight_decay, exclude=()):
    """Wrap the model so that its loss includes the coupled L2 penalty on every weight (but
    those whose path ends with one of `exclude`)."""
    return WeightDecayModel(model, weight_decay, exclude)


def make_loss(cfg, counts):
    kwargs = dict(cfg.loss.options)
    if cfg.loss.needs_counts:
        kwargs["counts"] = [int(c) for c in counts]
    return losses.get(cfg.loss.name, **kwargs)


def build_trainer(cfg, dataset, minority):
    """(model, trainer, loss): the classifier, its weight-decay wrapper compiled with SGD, the
    configured loss (counts from `dataset`) and the group metrics. Call under the strategy's
    scope."""
    model = build_model(cfg, dataset)
    loss = make_loss(cfg, dataset.counts)
    metrics = [metrics_lib.GroupAccuracy(list(range(dataset.num_classes)), name="all_accuracy")]
    if minority:
        metrics = metrics_lib.group_accuracies(minority, dataset.num_classes)
    # Cui et al. leave the sigmoid classifier's last bias (started at -log(C - 1)) undecayed.
    exclude = ("logits/bias",) if cfg.loss.name in catalog.SIGMOID else ()
    trainer = regularized(model, cfg.train.weight_decay, exclude)
    trainer(np.zeros((1,) + dataset.train.images.shape[1:], np.float32))  # Build.
    trainer.compile(
        optimizer=keras.optimizers.SGD(learning_rate(0, cfg), momentum=cfg.train.momentum),
        loss=loss, metrics=metrics, steps_per_execution=cfg.train.steps_per_execution)
    return model, trainer, loss


def schedule_callbacks(cfg, loss, retrace=None):
    """The learning-rate schedule, and LDAM's deferred re-weighting when configured.

    `retrace()` forgets the compiled train step when the loss's weights change (default: the
    Keras model's own train function, for `fit`)."""
    callbacks = [keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(epoch, cfg))]
    if cfg.loss.drw_epoch is not None:
        callbacks.append(DeferredReweighting(loss, cfg.loss.drw_epoch, cfg.loss.drw_beta,
                                             retrace))
    return callbacks


def learning_rate(epoch, cfg):
    """Learning rate for a 0-based epoch: piecewise constant, after an optional warm-up."""
    t = cfg.train
    lr = t.lr_values[int(np.searchsorted(t.lr_boundaries, epoch, side="right"))]
    if epoch < t.warmup_epochs:
        lr = t.lr_values[0] * (epoch + 1) / t.warmup_epochs
    return float(lr)


def minority_classes(cfg, counts):
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


class DeferredReweighting(keras.callbacks.Callback):
    """Class-balanced weights (beta) on `loss` from `start_epoch` on (Cao et al.'s DRW).

    Re-traces the train function when the weights change, since they are graph constants.
    """

    def __init__(self, loss, start_epoch, beta, retrace=None):
        super().__init__()
        self.loss, self.start_epoch, self.beta = loss, start_epoch, beta
        self.retrace = retrace

    def on_epoch_begin(self, epoch, logs=None):
        wanted = self.beta if epoch >= self.start_epoch else None
        if self.loss.beta != wanted:
            self.loss.set_beta(wanted)
            if self.retrace is not None:
                self.retrace()
            else:
                self.model.make_train_function(force=True)


# ---------------------------------------------------------------------------------------------
# The run.


def group_accuracy(matrix, classes):
    classes = list(classes)
    total = matrix[classes].sum()
    return float(np.trace(matrix[np.ix_(classes, classes)]) / total) if total else None


def best_evaluated_epoch(rows, split):
    """The evaluated epoch of highest all-class accuracy in the history rows, or None.

    Reference code for CIFAR-10-LT (Cao et al.'s) reports this statistic on the test split
    ("best Prec@1"); results.json keeps it beside the final epoch's accuracies, so that each
    published figure is compared with its own statistic.
    """
    best = None
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


def predict(model, dataset):
    """Scores of a dataset of (images, labels) batches, on this process (no collectives)."""
    import tensorflow as tf

    step = tf.function(lambda x: keras.ops.cast(model(x, training=False), "float32"),
                       reduce_retracing=True)
    return np.concatenate([step(x).numpy() for x, _ in dataset])


def steps_per_epoch(n, batch, replicas):
    """Training steps per epoch of n images: under several replicas the last partial batch is
    dropped (a remainder smaller than the replica count would leave a replica an empty batch)."""
    steps = n // batch if replicas > 1 else -(-n // batch)
    if steps < 1:
        raise data_lib.DataError(
            f"Invalid value for key `train.batch_size`. Expected at most the {n} training "
            f"images under {replicas} replicas (which drop the last partial batch). "
            f"Received: {batch}")
    return steps


class ClassifierExperiment(run_lib.Experiment):
    """`tfimb train`'s experiment for the run skeleton: data with its imbalance, the
    normalising ResNet with coupled weight decay, the configured loss and group metrics; after
    training, the test split's confusion matrix and group accuracies, `model.keras` and the
    training curves."""

    def dump_config(self, cfg):
        return config_lib.dump(cfg)

    def precision(self, cfg):
        return devices.resolve_precision(cfg.mixed_precision)

    def prepare(self, cfg):
        self.dataset = data_lib.load(cfg.data, cfg.imbalance)
        counts = self.dataset.counts
        if np.any(counts == 0):
            raise data_lib.DataError(f"Classes {np.flatnonzero(counts == 0).tolist()} have no "
                                     "training image after subsampling.")
        self.minority = minority_classes(cfg, counts)
        steps_per_epoch(len(self.dataset.train), cfg.train.batch_size, 1)

    def start(self, cfg, run_dir):
        rundir.atomic_write(run_dir / "counts.json", json.dumps(
            {"class_names": self.dataset.class_names,
             "counts": self.dataset.counts.tolist()}, indent=1))

    def build(self, cfg):
        self.model, trainer, self.loss = build_trainer(cfg, self.dataset, self.minority)
        return trainer

    def steps_per_epoch(self, cfg, replicas):
        return steps_per_epoch(len(self.dataset.train), cfg.train.batch_size, replicas)

    def train_data(self, cfg, epoch, replicas):
        return data_lib.pipeline(self.dataset.train, cfg.train.batch_size, training=True,
                                 seed=cfg.data.seed, augment=cfg.data.augment,
                                 drop_remainder=replicas > 1, epoch=epoch)

    def eval_data(self, cfg, replicas):
        return data_lib.pipeline(self.dataset.evaluation, cfg.train.batch_size, training=False)

    def callbacks(self, cfg, loop, run_dir, is_chief):
        return schedule_callbacks(cfg, self.loss, loop.retrace)

    def evaluates(self, cfg):
        return lambda epoch: cfg.evaluation.evaluates(epoch, cfg.train.epochs)

    def results(self, cfg, rows, loop):
        dataset, minority = self.dataset, self.minority
        scores = predict(self.model, data_lib.pipeline(dataset.test, 512, training=False))
        matrix = metrics_lib.confusion_matrix(dataset.test.labels, scores, dataset.num_classes)
        majority = [c for c in range(dataset.num_classes) if c not in minority]
        return {
            "accuracy": {"majority": group_accuracy(matrix, majority) if minority else None,
                         "minority": group_accuracy(matrix, minority) if minority else None,
                         "all": group_accuracy(matrix, range(dataset.num_classes))},
            "best_evaluated_epoch": best_evaluated_epoch(
                rows, "validation" if len(dataset.validation) else "test"),
            "per_class_accuracy": metrics_lib.per_class_accuracy(
                dataset.test.labels, scores, dataset.num_classes).tolist(),
            "confusion_matrix": matrix.tolist(),
            "counts": dataset.counts.tolist(),
            "class_names": dataset.class_names,
            "minority_classes": minority,
        }

    def save(self, cfg, run_dir):
        save_model(self.model, run_dir / "model.keras")
        report.plot_run(run_dir)


def run(cfg, run_dir, resume=False, verbose="auto", callbacks=()):
    """Train, evaluate on the test split and write the run directory; returns the results.

    The run skeleton (`tfimb.runtime.run`) with `ClassifierExperiment`: every strategy trains
    through `tfimb.runtime.loop.TrainingLoop`; under several workers only the chief writes.
    `callbacks` are extra Keras callbacks (after tfimb's own)."""
    return run_lib.run(ClassifierExperiment(), cfg, run_dir, resume, verbose, callbacks)
