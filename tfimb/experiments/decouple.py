"""The decoupled second stage (`tfimb decouple RUN_DIR --method M`): a new classifier on a trained
backbone, as Kang et al. (ICLR 2020, "Decoupling representation and classifier for
long-tailed recognition") do after instance-balanced training.

* `crt` (classifier re-training): the classifier re-initialised and retrained alone with
  class-balanced sampling; the backbone and its batch-norm statistics frozen.
* `lws` (learnable weight scaling): one scale per class on the frozen classifier's logits,
  learned with class-balanced sampling.
* `tau_norm`: every class's weight vector divided by its norm to the power tau,
  `w_j / ||w_j||^tau` (bias kept, so tau = 0 is the first model); no training. Tau is the
  candidate (`stage.taus`, 0 to 2) with the best balanced accuracy on the validation split.
* `ncm` (nearest class mean): the class means of the training images' features, centred by the
  mean feature and L2-normalised; a test image goes to the nearest mean. No training.

Hyper-parameters are chosen on the validation split, never on the test split: the first run's
own (`data.validation_per_class`) when it carved one, else one drawn from the training images
the imbalance leaves out (`data.validation_from: left_out`, `tfimb.config.classify.DEFAULT_VALIDATION` per class),
which leaves the training set exactly the first run's. cRT and LWS evaluate that split every
epoch (`best_evaluated_epoch`); their schedule is BagofTricks-LT's CIFAR recipe
(`tfimb.config.classify.STAGE_TRAIN`), every key overridable with `--set`.

The stage writes a new run directory with `tfimb train`'s results schema (group, shot and
per-class accuracy, calibration, post-hoc adjustment) plus a `stage` section, its
`model.keras` (image to logits, loadable alone) and, for cRT and LWS, checkpoints and
`--resume`. The functions (`crt_model`, `lws_model`, `tau_normalized`, `ncm_model`) work on any
Keras classifier whose last layer is named `logits` (tfimb's models); LWS and tau-norm need it
dense.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

import keras

from tfimb import _checks
from tfimb import data as data_lib
from tfimb import models
from tfimb._checks import PathLike
from tfimb.config import classify as config_lib
from tfimb.config import dump as dump_config
from tfimb.config.classify import ExperimentConfig
from tfimb.experiments import classify
from tfimb.runtime import loop as loop_lib
from tfimb.runtime import rundir
from tfimb.runtime import run as run_lib

if TYPE_CHECKING:
    import tensorflow as tf

METHODS = config_lib.STAGE_METHODS
TRAINED = config_lib.TRAINED_STAGES
stage_config = config_lib.stage_config


# ---------------------------------------------------------------------------------------------
# The methods, on a Keras model.


def _logits_layer(model: keras.Model, dense: bool = True
                  ) -> tuple[keras.Model, keras.layers.Layer]:
    """(the functional model holding the `logits` layer, that layer), which must be Dense
    unless `dense` is False."""
    for owner in [model] + [layer for layer in model.layers if isinstance(layer, keras.Model)]:
        try:
            layer = owner.get_layer("logits")
        except ValueError:
            continue
        if dense and type(layer) is not keras.layers.Dense:
            raise ValueError(f"Invalid value for argument `model`. Expected a classifier whose "
                             f"`logits` layer is Dense (LWS and tau-norm act on a linear "
                             f"classifier; cRT and NCM take any). Received: a "
                             f"{type(layer).__name__} `logits` layer")
        return owner, layer
    raise ValueError("Invalid value for argument `model`. Expected a classifier with a layer "
                     f"named `logits` (tfimb's models). Received: model {model.name!r}")


def feature_model(model: keras.Model) -> keras.Model:
    """Image -> the features the `logits` layer reads (the model's backbone), sharing the
    model's layers. The classifier models of `tfimb train` nest the backbone in the outer
    model (normalisation, then backbone); both layouts are handled."""
    owner, layer = _logits_layer(model, dense=False)
    inner = keras.Model(owner.inputs, layer.input, name="features")
    if owner is model:
        return inner
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    x = inputs
    for outer_layer in model.layers:
        if isinstance(outer_layer, keras.layers.InputLayer):
            continue
        x = inner(x) if outer_layer is owner else outer_layer(x)
    return keras.Model(inputs, x, name="features")


def _frozen_features(model: keras.Model) -> keras.Model:
    features = feature_model(model)
    features.trainable = False  # Weights and batch-norm statistics: inference mode.
    return features


def crt_model(model: keras.Model, num_classes: int, seed: int | None = None) -> keras.Model:
    """cRT: the frozen backbone of `model` and a freshly initialised dense classifier
    (Keras' defaults: Glorot-uniform kernel, zero bias), the only trainable weights."""
    features = _frozen_features(model)
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    head = keras.layers.Dense(
        num_classes, dtype="float32", name="logits",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    return keras.Model(inputs, head(features(inputs, training=False)), name="crt")


def lws_model(model: keras.Model) -> keras.Model:
    """LWS: `model`'s logits (backbone and classifier frozen) times one learned scale per class
    (`tfimb.models.ClassScales`, starting at 1), the only trainable weights."""
    _, logits = _logits_layer(model)
    frozen = keras.Model(model.inputs[0], model.outputs[0], name="first_stage")
    frozen.trainable = False
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    scales = models.ClassScales(logits.units, dtype="float32", name="class_scales")
    return keras.Model(inputs, scales(frozen(inputs, training=False)), name="lws")


def tau_normalized(model: keras.Model, tau: float) -> keras.Model:
    """tau-normalisation: a copy of `model` whose classifier weights are `w_j / ||w_j||^tau`
    (each class's weight vector, the bias kept; tau = 0 is `model`, tau = 1 unit norms)."""
    tau = _checks.check_range("tau", tau, 0.0)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    _, layer = _logits_layer(copy)
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    norms = np.linalg.norm(kernel, axis=0, keepdims=True)
    layer.kernel.assign((kernel / np.maximum(norms, 1e-12) ** tau).astype(np.float32))
    return copy


def _features(features: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    return classify.predict(features, dataset)


def ncm_model(model: keras.Model, train: tf.data.Dataset, labels: np.ndarray,
              num_classes: int) -> keras.Model:
    """NCM: image -> `-||g(x) - mu_c||^2` (`tfimb.models.NearestClassMean`), the means mu_c of
    g over `train` (batches of (images, labels) in the order of `labels`, not augmented), g
    the features centred by their training mean and L2-normalised."""
    features = _frozen_features(model)
    f = _features(features, train).astype(np.float64)
    labels = np.asarray(labels)
    center = f.mean(0)
    g = f - center
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    missing = np.setdiff1d(np.arange(num_classes), labels)
    if missing.size:
        raise data_lib.DataError(f"NCM needs training images of every class: classes "
                                 f"{missing.tolist()} have none.")
    means = np.stack([g[labels == c].mean(0) for c in range(num_classes)])
    head = models.NearestClassMean(num_classes, dtype="float32", name="ncm")
    head.set_means(means, center)
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    return keras.Model(inputs, head(features(inputs, training=False)), name="ncm")


def balanced_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class accuracy over the classes present in `labels`."""
    predicted = np.argmax(logits, axis=1)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def choose_tau(model: keras.Model, validation: tf.data.Dataset, labels: np.ndarray,
               taus: Sequence[float]) -> tuple[float, dict[float, float]]:
    """(tau, {tau: balanced validation accuracy}): the candidate with the best balanced accuracy
    of the tau-normalised classifier on `validation` (ties: the smaller tau). The features are
    computed once; only the classifier changes with tau."""
    features = _frozen_features(model)
    f = _features(features, validation).astype(np.float64)
    _, layer = _logits_layer(model)
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else 0.0
    norms = np.maximum(np.linalg.norm(kernel, axis=0, keepdims=True), 1e-12)
    scores = {float(t): balanced_accuracy(f @ (kernel / norms ** t) + bias, labels)
              for t in sorted({float(_checks.check_range("taus", t, 0.0)) for t in taus})}
    best = max(scores.values())
    return min(t for t, s in scores.items() if s >= best - 1e-12), scores


# ---------------------------------------------------------------------------------------------
# The stage as a run.


class DecoupleExperiment(classify.ClassifierExperiment):
    """cRT and LWS through the run skeleton (checkpoints, `--resume`, preemption): the stage's
    model, trained with the stage config's sampling and schedule; results as `tfimb train`'s
    with a `stage` section."""

    def build(self, cfg: ExperimentConfig) -> keras.Model:
        _, first = classify.load_run(cfg.stage.from_run)
        self.model = stage_model(first, cfg.stage.method, self.dataset.num_classes,
                                 cfg.train.seed)
        self.loss = classify.make_loss(cfg, self.dataset.counts)
        # Weight decay reaches only the stage's trainable weights (the frozen ones are not).
        return classify.compiled_trainer(cfg, self.model, self.loss, self.dataset,
                                         self.minority)

    def results(self, cfg: ExperimentConfig, rows: list[dict[str, Any]],
                loop: loop_lib.TrainingLoop | None) -> dict[str, Any]:
        results = super().results(cfg, rows, loop)
        results["stage"] = {"method": cfg.stage.method, "from_run": cfg.stage.from_run,
                            **_validation_record(self.dataset)}
        best = results["best_evaluated_epoch"]
        if best is not None:  # A group without validation images has no accuracy there.
            held = set(np.flatnonzero(results["stage"]["validation_counts"]).tolist())
            groups = {"majority": [c for c in range(self.dataset.num_classes)
                                   if c not in self.minority], "minority": self.minority}
            for group, classes in groups.items():
                if classes and not held & set(classes):
                    best["accuracy"][group] = None
        return results


def _validation_record(dataset: data_lib.Dataset) -> dict[str, Any]:
    counts = np.bincount(dataset.validation.labels, minlength=dataset.num_classes)
    return {"validation_counts": counts.tolist()}


def stage_model(first: keras.Model, method: str, num_classes: int,
                seed: int | None = None) -> keras.Model:
    """The trainable stage-2 model of cRT or LWS on the first run's model."""
    if method == "crt":
        return crt_model(first, num_classes, seed)
    if method == "lws":
        return lws_model(first)
    raise ValueError(f"{method!r} trains nothing: see `run`")


class _UntrainedStage(classify.ClassifierExperiment):
    """tau-norm and NCM: the model is computed, not trained (no checkpoints, no history)."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__()
        self.prepare(cfg)
        _, first = classify.load_run(cfg.stage.from_run)
        dataset, stage = self.dataset, cfg.stage
        self.loss = classify.make_loss(cfg, dataset.counts)
        self.record: dict[str, Any] = {"method": stage.method, "from_run": stage.from_run,
                                       **_validation_record(dataset)}
        if stage.method == "tau_norm":
            if len(dataset.validation):
                tau, curve = choose_tau(first, _ordered(dataset.validation),
                                        dataset.validation.labels, stage.taus)
                self.record.update(tau=tau, chosen_on="validation",
                                   validation_balanced_accuracy={str(t): a
                                                                 for t, a in curve.items()})
            else:
                self.record.update(tau=1.0, chosen_on=None)
            self.model = tau_normalized(first, self.record["tau"])
        else:
            self.model = ncm_model(first, _ordered(dataset.train), dataset.train.labels,
                                   dataset.num_classes)


def _ordered(split: data_lib.Split) -> tf.data.Dataset:
    return data_lib.pipeline(split, 512, training=False)


def run(cfg: ExperimentConfig, run_dir: PathLike, resume: bool = False,
        verbose: Any = "auto") -> dict[str, Any]:
    """Run the configured second stage (`cfg.stage`) into `run_dir`; return its results."""
    if cfg.stage is None:
        raise config_lib.ConfigError("Missing section `stage` (method and from_run): use "
                                     "`tfimb decouple RUN_DIR --method M`.")
    if cfg.stage.method in TRAINED:
        return run_lib.run(DecoupleExperiment(), cfg, run_dir, resume, verbose)
    return _run_untrained(cfg, pathlib.Path(run_dir), resume)


def _run_untrained(cfg: ExperimentConfig, run_dir: pathlib.Path,
                   resume: bool) -> dict[str, Any]:
    """tau-norm / NCM: the run directory as `tfimb train` leaves it (config.yaml, counts.json,
    model.keras, plots, results.json written last), in minutes; `--resume` recomputes."""
    import json

    config_text = dump_config(cfg)
    lock = rundir.RunLock(run_dir).acquire()
    started = False
    try:
        resuming = rundir.check_run_dir(run_dir, config_text, resume,
                                        dump_config(type(cfg)()))
        experiment = _UntrainedStage(cfg)
        if not resuming:
            rundir.create_run_dir(run_dir, config_text)
        started = True
        experiment.start(cfg, run_dir)
        results = {**experiment.results(cfg, [], None), "stage": experiment.record,
                   "epochs_completed": 0, "train_seconds": 0.0, "images_per_second": None,
                   "precision": "float32", "replicas": 1, "config": cfg.to_dict()}
        experiment.save(cfg, run_dir)
        rundir.atomic_write(run_dir / rundir.RESULTS, json.dumps(results, indent=1))
        return results
    finally:
        lock.release(remove_created=not started)
