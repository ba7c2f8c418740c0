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

from tfimb import _files, catalog
from tfimb import config as config_lib
from tfimb import platform_info

RESULTS = _files.RESULTS
RunDirError = _files.RunDirError
_atomic_write = _files.atomic_write


# ---------------------------------------------------------------------------------------------
# Environment: devices, strategy, precision.


def configure_devices(distribute):
    """Split the CPU into logical devices for `mirrored` when there is no GPU (before TF runs)."""
    import tensorflow as tf

    if distribute.strategy != "mirrored" or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * distribute.num_cpu_devices)
    except RuntimeError:  # Already initialised: keep what exists if it is enough.
        if len(tf.config.list_logical_devices("CPU")) < distribute.num_cpu_devices:
            raise


_MULTI_WORKER = None


def make_strategy(distribute):
    """The configured strategy; `multi_worker` reads the cluster from TF_CONFIG (create it before
    any other TensorFlow work: its collectives are configured at start-up)."""
    import tensorflow as tf

    if distribute.strategy == "default":
        return tf.distribute.get_strategy()
    if distribute.strategy == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise RunDirError(
                "distribute.strategy=multi_worker reads the cluster from the TF_CONFIG "
                "environment variable, which is not set. Set it on every host (README: "
                "'Several hosts'), or pass --local-workers N to start N workers on this machine.")
        global _MULTI_WORKER  # One per process: a second one's collectives do not connect.
        if _MULTI_WORKER is None:
            _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
        return _MULTI_WORKER
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)


def cpu_has_amx_bf16():
    return platform_info.has_fast_bf16()


def resolve_precision(name):
    """`auto`: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with AMX-bf16, else float32."""
    if name != "auto":
        return name
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_amx_bf16() else "float32"


# ---------------------------------------------------------------------------------------------
# Model, loss, optimiser, callbacks.


def build_model(cfg, dataset):
    """Normalisation (training-set channel statistics) + the configured ResNet."""
    from tfimb import data as data_lib
    from tfimb import models

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
    """Wraps a model so that its training loss includes `decay / 2 * ||w||^2` on every weight."""

    def __init__(self, inner, decay):
        super().__init__(name=inner.name)
        self.inner = inner
        self.decay = decay

    def call(self, inputs, training=False):
        if training and self.decay:
            penalty = sum(keras.ops.sum(keras.ops.square(keras.ops.cast(w, "float32")))
                          for w in self.inner.trainable_weights)
            self.add_loss(0.5 * self.decay * penalty)
        return self.inner(inputs, training=training)


def regularized(model, weight_decay):
    """Wrap the model so that its loss includes the coupled L2 penalty on every weight."""
    return WeightDecayModel(model, weight_decay)


def make_loss(cfg, counts):
    from tfimb import losses

    kwargs = dict(cfg.loss.options)
    if cfg.loss.needs_counts:
        kwargs["counts"] = [int(c) for c in counts]
    return losses.get(cfg.loss.name, **kwargs)


def build_trainer(cfg, dataset, minority):
    """(model, trainer, loss): the classifier, its weight-decay wrapper compiled with SGD, the
    configured loss (counts from `dataset`) and the group metrics. Call under the strategy's
    scope."""
    from tfimb import metrics as metrics_lib

    model = build_model(cfg, dataset)
    loss = make_loss(cfg, dataset.counts)
    metrics = [metrics_lib.GroupAccuracy(list(range(dataset.num_classes)), name="all_accuracy")]
    if minority:
        metrics = metrics_lib.group_accuracies(minority, dataset.num_classes)
    trainer = regularized(model, cfg.train.weight_decay)
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
        return list(cfg.evaluation.minority)
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


def resume_mode(distribute, resume):
    """`resume` for `_files.prepare_run_dir`: multi-worker runs resume an unfinished run of the
    same config without --resume ("auto"), since a worker that died is restarted with the
    command that started it."""
    return "auto" if distribute.strategy == "multi_worker" else resume


def prepare_run_dir(run_dir, cfg, resume, is_chief=True):
    """Create or check the run directory; return True when resuming."""
    return _files.prepare_run_dir(run_dir, config_lib.dump(cfg),
                                  resume_mode(cfg.distribute, resume), writable=is_chief)


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


def run(cfg, run_dir, resume=False, verbose="auto", callbacks=()):
    """Train, evaluate on the test split and write the run directory; returns the results.

    Every strategy trains through `tfimb.loop.TrainingLoop`; under several workers only the
    chief writes. `callbacks` are extra Keras callbacks (after tfimb's own).
    """
    configure_devices(cfg.distribute)
    strategy = make_strategy(cfg.distribute)

    from tfimb import data as data_lib
    from tfimb import loop as loop_lib
    from tfimb import metrics as metrics_lib

    is_chief, _ = loop_lib.worker_role(strategy)
    run_dir = pathlib.Path(run_dir)
    prepare_run_dir(run_dir, cfg, resume, is_chief)
    keras.utils.set_random_seed(cfg.train.seed)
    precision = resolve_precision(cfg.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)
    try:
        dataset = data_lib.load(cfg.data, cfg.imbalance)
        counts = dataset.counts
        if np.any(counts == 0):
            raise data_lib.DataError(f"Classes {np.flatnonzero(counts == 0).tolist()} have no "
                                     "training image after subsampling.")
        if is_chief:
            _atomic_write(run_dir / "counts.json", json.dumps(
                {"class_names": dataset.class_names, "counts": counts.tolist()}, indent=1))
        minority = minority_classes(cfg, counts)
        with strategy.scope():
            model, trainer, loss = build_trainer(cfg, dataset, minority)
        replicated = strategy.num_replicas_in_sync > 1
        batch = cfg.train.batch_size
        steps = len(dataset.train) // batch if replicated else -(-len(dataset.train) // batch)
        if steps < 1:
            raise data_lib.DataError(
                f"Invalid value for key `train.batch_size`. Expected at most the "
                f"{len(dataset.train)} training images under {strategy.num_replicas_in_sync} "
                f"replicas (which drop the last partial batch). Received: {batch}")
        loop = loop_lib.TrainingLoop(trainer, strategy, run_dir, cfg.train.steps_per_execution,
                                     cfg.train.checkpoint_every)

        def train_data(epoch):
            return data_lib.pipeline(dataset.train, batch, training=True, seed=cfg.data.seed,
                                     augment=cfg.data.augment, drop_remainder=replicated,
                                     epoch=epoch)

        eval_ds = data_lib.pipeline(dataset.evaluation, batch, training=False)
        if verbose == "auto":
            verbose = 1 if os.isatty(1) else 2
        rows = loop.fit(train_data, steps, cfg.train.epochs, batch, eval_data=eval_ds,
                        callbacks=schedule_callbacks(cfg, loss, loop.retrace) + list(callbacks),
                        verbose=verbose,
                        evaluates=lambda epoch: cfg.evaluation.evaluates(epoch, cfg.train.epochs))

        scores = predict(model, data_lib.pipeline(dataset.test, 512, training=False))
        matrix = metrics_lib.confusion_matrix(dataset.test.labels, scores, dataset.num_classes)
        majority = [c for c in range(dataset.num_classes) if c not in minority]
        results = {
            "accuracy": {"majority": group_accuracy(matrix, majority) if minority else None,
                         "minority": group_accuracy(matrix, minority) if minority else None,
                         "all": group_accuracy(matrix, range(dataset.num_classes))},
            "per_class_accuracy": metrics_lib.per_class_accuracy(
                dataset.test.labels, scores, dataset.num_classes).tolist(),
            "confusion_matrix": matrix.tolist(),
            "counts": counts.tolist(),
            "class_names": dataset.class_names,
            "minority_classes": minority,
            "best_evaluated_epoch": best_evaluated_epoch(
                rows, "validation" if len(dataset.validation) else "test"),
            "epochs_completed": len(rows),
            "train_seconds": loop.train_seconds,
            "images_per_second": (loop.train_images / loop.train_seconds
                                  if loop.train_seconds else None),
            "precision": precision,
            "replicas": strategy.num_replicas_in_sync,
            "config": cfg.to_dict(),
        }
        if is_chief:
            save_model(model, run_dir / "model.keras")
            from tfimb import report

            report.plot_run(run_dir)
            _atomic_write(run_dir / RESULTS, json.dumps(results, indent=1))
        return results
    finally:
        keras.mixed_precision.set_global_policy("float32")
