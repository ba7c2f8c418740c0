"""`tfimb flow train / evaluate / sample / interpolate`: RealNVP runs under tf.distribute.

Training follows the paper and the authors' code: Adam (default betas), L2 on the weight-norm
scales, gradient clipping at a global norm, uniform dequantisation noise drawn per step, random
horizontal flips, and a numerics check that stops training with a clear message before a
checkpoint of a non-finite step can be written.

A run directory holds `config.yaml`, `history.csv` (per epoch: training bits/dim in training
mode, evaluation bits/dim in inference mode), `logs/` (TensorBoard: bits/dim and samples),
`checkpoints/` (every epoch; `--resume` continues), `model.weights.h5`, `samples.png` and, written
atomically once the run has finished, `results.json`.

Imbalanced data (`imbalance`, `tfimb train`'s section) cuts the training split. A
class-conditional model (`model.class_conditional`) trains on (images, labels) batches and
adds `samples_per_class.png` (a row per class); `train.class_weighting: balanced` weights each
example's bits/dim in the loss by n / (C n_y) ((images, labels, weights) batches). results.json
holds the evaluation images' bits/dim per class and the class counts of every run.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Literal, Sequence

import keras
import numpy as np
import tensorflow as tf
import yaml

from tfimb import _checks
from tfimb._checks import ArrayLike, PathLike
from tfimb import config as config_lib
from tfimb import data as data_lib
from tfimb.config import FlowConfig
from tfimb.flows import conditional, realnvp
from tfimb.runtime import rundir
from tfimb.runtime import run as run_lib
from tfimb.runtime.loop import TrainingLoop

RESULTS = rundir.RESULTS
WEIGHTS = "model.weights.h5"


FlowRunError = rundir.RunDirError  # A run directory that cannot be used as asked.
DataError = data_lib.DataError  # Data that cannot be used (missing folder, tfds failure...).
_atomic_write = rundir.atomic_write


def _subset_examples(split, limit, seed):
    """(images, labels) of `limit` examples of a split drawn by `seed` (all: None)."""
    if limit is None or limit >= len(split):
        return split.images, split.labels
    index = np.sort(np.random.default_rng(seed).permutation(len(split))[:limit])
    return split.images[index], split.labels[index]


def _subset(split, limit, seed):
    """The images of `_subset_examples`."""
    return _subset_examples(split, limit, seed)[0]


def pipeline(images: np.ndarray, batch_size: int, training: bool, seed: int = 0,
             flip: bool = True, drop_remainder: bool = False,
             epoch: int | None = None, labels: np.ndarray | None = None,
             class_weights: ArrayLike | None = None) -> tf.data.Dataset:
    """uint8 images -> batches (shuffled and randomly flipped when training; with `epoch`, that
    one epoch, its order and flips a function of (seed, epoch), as `tfimb.data.pipeline`).

    With `labels`, batches of (images, labels), in the same order with the same flips; with
    `class_weights` too (a weight per class), (images, labels, class_weights[labels])."""
    ds = tf.data.Dataset.from_tensor_slices(images if labels is None else (images, labels))
    if training:
        # Shuffling and the flip seeds do not depend on the elements: labels change neither.
        ds, seeds = data_lib.shuffled_with_seeds(ds, min(len(images), 20000), seed, epoch)
        if flip and labels is None:
            ds = tf.data.Dataset.zip(ds, seeds).map(
                tf.image.stateless_random_flip_left_right, num_parallel_calls=tf.data.AUTOTUNE)
        elif flip:
            ds = tf.data.Dataset.zip(ds, seeds).map(
                lambda example, s: (tf.image.stateless_random_flip_left_right(example[0], s),
                                    example[1]), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder or training)
    if class_weights is not None:
        if labels is None:
            raise _checks.invalid_value("labels", "the class ids that `class_weights` weight",
                                        None)
        weights = tf.constant(np.asarray(class_weights, np.float32))
        ds = ds.map(lambda x, y: (x, y, tf.gather(weights, y)))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def build_model(cfg: FlowConfig, image_shape: Sequence[int],
                num_classes: int | None = None) -> realnvp.RealNVP:
    """RealNVP per `cfg.model`; `num_classes` (the data's) is needed, and used, only when
    `model.class_conditional` is true."""
    m = cfg.model
    if m.class_conditional and num_classes is None:
        raise _checks.invalid_value("num_classes", "the number of classes of a "
                                    "class-conditional flow (model.class_conditional)", None)
    model = realnvp.RealNVP(image_shape, num_scales=m.num_scales, num_blocks=m.num_blocks,
                            num_filters=m.num_filters, momentum=m.momentum,
                            network_momentum=m.network_momentum, epsilon=m.epsilon,
                            alpha=m.alpha, l2=cfg.train.l2, seed=cfg.train.seed,
                            num_classes=num_classes if m.class_conditional else None,
                            skip_connections=m.skip_connections, concat_relu=m.concat_relu,
                            width_doubling=m.width_doubling,
                            scale_parameterisation=m.scale_parameterisation,
                            normalization=m.normalization, weight_init=m.weight_init)
    model.build()
    return model


def build_compiled_model(cfg: FlowConfig, image_shape: Sequence[int],
                         num_classes: int | None = None) -> realnvp.RealNVP:
    """`build_model`, compiled with the training optimizer: Adam (default betas) at
    `train.learning_rate`, gradients clipped to global norm `train.clip_norm`."""
    model = build_model(cfg, image_shape, num_classes)
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate,
                                                  global_clipnorm=cfg.train.clip_norm))
    return model


def sample_labels(model: realnvp.RealNVP, n: int) -> np.ndarray | None:
    """Class ids cycling through the classes for n samples of a conditional model (samples.png
    and TensorBoard show every class); None for an unconditional one."""
    return None if model.num_classes is None else np.arange(n) % model.num_classes


def sample_per_class(model: realnvp.RealNVP, per_class: int = 8, temperature: float = 1.0,
                     seed: int = 0) -> np.ndarray:
    """uint8 samples of a conditional model, `per_class` of each class in class order (a grid
    row per class with `write_grid(..., columns=per_class)`)."""
    labels = np.repeat(np.arange(model.num_classes or 0), per_class)
    return model.sample(len(labels), temperature, seed=seed, labels=labels).numpy()


def _sample_callback(log_dir, n=16):
    class SampleImages(keras.callbacks.Callback):
        """Samples (temperature 1 and 0.7) to TensorBoard at the end of every epoch."""
        def __init__(self):
            super().__init__()
            self.writer = tf.summary.create_file_writer(str(log_dir / "samples"))

        def on_epoch_end(self, epoch, logs=None):
            with self.writer.as_default():
                for temperature in (1.0, 0.7):
                    images = self.model.sample(n, temperature, seed=epoch,
                                               labels=sample_labels(self.model, n))
                    tf.summary.image(f"samples_T{temperature}", images, step=epoch,
                                     max_outputs=n)
            self.writer.flush()

    return SampleImages()


class FlowExperiment(run_lib.Experiment):
    """`tfimb flow train`'s experiment for the run skeleton: images (subsets for CPU-sized
    runs), RealNVP with its optimizer, bits/dim; after training, test bits/dim, the weights,
    samples and the image shape (so that the run rebuilds without its data)."""
    def dump_config(self, cfg: FlowConfig) -> str:
        return config_lib.dump_flow(cfg)

    def prepare(self, cfg: FlowConfig) -> None:
        self.dataset = data_lib.load(cfg.data, cfg.imbalance, stream=False)
        self.train_images, self.train_labels = _subset_examples(
            self.dataset.train, cfg.train.max_train_images, cfg.train.seed)
        self.eval_images, self.eval_labels = _subset_examples(
            self.dataset.evaluation, cfg.train.max_eval_images, cfg.train.seed + 1)
        if len(self.train_images) // cfg.train.batch_size < 1:
            raise data_lib.DataError(
                f"Invalid value for key `train.batch_size`. Expected at most the "
                f"{len(self.train_images)} training images. Received: {cfg.train.batch_size}")
        self.counts = np.bincount(self.train_labels, minlength=self.dataset.num_classes)
        self.class_weights = (None if cfg.train.class_weighting == "none" else
                              conditional.class_weights(self.counts, cfg.train.class_weighting))

    def build(self, cfg: FlowConfig) -> realnvp.RealNVP:
        self.model = build_compiled_model(cfg, self.train_images.shape[1:],
                                          self.dataset.num_classes)
        return self.model

    def steps_per_epoch(self, cfg: FlowConfig, replicas: int) -> int:
        return len(self.train_images) // cfg.train.batch_size

    def train_data(self, cfg: FlowConfig, epoch: int, replicas: int) -> tf.data.Dataset:
        # Labels only where they are used: an unconditional, unweighted run keeps its batches.
        uses_labels = cfg.model.class_conditional or self.class_weights is not None
        return pipeline(self.train_images, cfg.train.batch_size, True, cfg.train.seed,
                        cfg.train.flip, drop_remainder=True, epoch=epoch,
                        labels=self.train_labels if uses_labels else None,
                        class_weights=self.class_weights)

    def eval_data(self, cfg: FlowConfig, replicas: int) -> tf.data.Dataset:
        return pipeline(self.eval_images, cfg.train.batch_size, False,
                        drop_remainder=replicas > 1,
                        labels=self.eval_labels if cfg.model.class_conditional else None)

    def callbacks(self, cfg: FlowConfig, loop: TrainingLoop, run_dir: pathlib.Path,
                  is_chief: bool) -> list[keras.callbacks.Callback]:
        return [_sample_callback(run_dir / "logs")] if is_chief else []

    def fit_errors(self, error: Exception, run_dir: pathlib.Path) -> Exception | None:
        if not isinstance(error, tf.errors.InvalidArgumentError) or "RealNVP:" not in str(error):
            return None
        message = str(error).split("RealNVP:")[1].split(" : ")[0].split("\n")[0]
        return FloatingPointError(
            f"RealNVP training stopped: {message.strip()}. {run_dir} keeps the checkpoint of "
            "the last completed epoch (resume with --resume after lowering "
            "train.learning_rate or train.clip_norm).")

    def results(self, cfg: FlowConfig, rows: list[dict[str, str]],
                loop: TrainingLoop) -> dict[str, Any]:
        history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in rows]
        per_example = bits_per_dim_of(self.model, self.eval_images, cfg.train.batch_size,
                                      labels=self.eval_labels)
        num_classes = self.dataset.num_classes
        per_class = conditional.per_class_mean(per_example, self.eval_labels, num_classes)
        return {
            "bits_per_dim": {"train": history[-1].get("bits_per_dim") if history else None,
                             "test": mean_bits_per_dim(per_example, cfg.train.batch_size)},
            # The same evaluation images and noise as `test`, averaged per class (of p(x | y)
            # for a conditional model, else of p(x)); null for a class without images.
            "bits_per_dim_per_class": [None if np.isnan(v) else float(v) for v in per_class],
            "class_counts": {"train": self.counts.tolist(),
                             "evaluation": np.bincount(self.eval_labels,
                                                       minlength=num_classes).tolist()},
            "class_names": [str(name) for name in self.dataset.class_names],
            "num_classes": num_classes,
            "class_weights": (None if self.class_weights is None
                              else self.class_weights.tolist()),
            "num_parameters": int(sum(np.prod(w.shape) for w in self.model.trainable_weights)),
            # What rebuilding the model needs beyond config.yaml: export, sample and
            # interpolate then never read the dataset.
            "image_shape": [int(d) for d in self.train_images.shape[1:]],
            "evaluation_split": "validation" if len(self.dataset.validation) else "test",
            "evaluation_images": int(len(self.eval_images)),
        }

    def save(self, cfg: FlowConfig, run_dir: pathlib.Path) -> None:
        tmp = run_dir / f".{WEIGHTS}.tmp.weights.h5"
        self.model.save_weights(tmp)
        os.replace(tmp, run_dir / WEIGHTS)
        write_grid(self.model.sample(64, 1.0, seed=0, labels=sample_labels(self.model, 64))
                   .numpy(), run_dir / "samples.png")
        if self.model.num_classes is not None:
            write_grid(sample_per_class(self.model, 8), run_dir / "samples_per_class.png", 8)


def run(cfg: FlowConfig, run_dir: PathLike, resume: bool = False,
        verbose: int | Literal["auto"] = "auto",
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, Any]:
    """Train RealNVP per `cfg` into `run_dir`; evaluate; write samples and results.json.

    The run skeleton (`tfimb.runtime.run`) with `FlowExperiment`: every strategy trains
    through `tfimb.runtime.loop.TrainingLoop`; under several workers only the chief writes.
    `callbacks`: extra Keras callbacks (after tfimb's own)."""
    return run_lib.run(FlowExperiment(), cfg, run_dir, resume, verbose, callbacks)


def bits_per_dim_of(model: realnvp.RealNVP, images: np.ndarray, batch_size: int,
                    seed: int = 1234, labels: np.ndarray | None = None) -> np.ndarray:
    """Bits/dim of each uint8 image, float32 [N] (inference mode, uniform dequantisation, batch
    i's noise from the stateless seed (seed, i)); a conditional model scores p(x | y) and needs
    the class ids `labels` (an unconditional one does not use them)."""
    @tf.function
    def batch_bpd(batch, seed, batch_labels=None):
        return model.bits_per_dim(batch, noise="uniform", seed=seed, labels=batch_labels)

    out = []
    for i, start in enumerate(range(0, len(images), batch_size)):
        batch = tf.constant(images[start:start + batch_size])
        batch_seed = tf.constant([seed, i], tf.int32)
        if model.num_classes is None:
            out.append(batch_bpd(batch, batch_seed).numpy())
        else:
            if labels is None:
                model._checked_labels(None)  # The model's one-line error.
            out.append(batch_bpd(batch, batch_seed,
                                 tf.constant(labels[start:start + batch_size])).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def mean_bits_per_dim(per_example: np.ndarray, batch_size: int) -> float:
    """The mean of `bits_per_dim_of`'s values as `evaluate_images` always summed them (per
    batch in float32, then in Python), so the figures of earlier runs reproduce exactly."""
    total = sum(float(per_example[s:s + batch_size].sum())
                for s in range(0, len(per_example), batch_size))
    return total / len(per_example)


def evaluate_images(model: realnvp.RealNVP, images: np.ndarray, batch_size: int,
                    seed: int = 1234, labels: np.ndarray | None = None) -> float:
    """Mean bits/dim of uint8 images (inference mode, uniform dequantisation, fixed seed);
    `labels` as `bits_per_dim_of`."""
    return mean_bits_per_dim(bits_per_dim_of(model, images, batch_size, seed, labels), batch_size)


# ---------------------------------------------------------------------------------------------
# Finished runs: evaluate, sample, interpolate.


def load_run(run_dir: PathLike) -> tuple[FlowConfig, realnvp.RealNVP]:
    """(config, model with the trained weights) of a finished run directory.

    The model is rebuilt from config.yaml and the image shape in results.json, so no data is
    read (runs written before results.json carried the shape load their training images once
    to find it). `test_images(cfg)` gives the images to evaluate or interpolate."""
    run_dir = pathlib.Path(run_dir)
    if (run_dir / "model.keras").exists():
        raise FlowRunError(f"{run_dir} holds a classifier run (model.keras), not a flow: the "
                           "`tfimb flow` commands take `tfimb flow train` run directories; "
                           "evaluate a classifier with `tfimb report` or `tfimb export`.")
    if not (run_dir / WEIGHTS).exists():
        raise FlowRunError(f"{run_dir} holds no finished flow ({WEIGHTS} is missing); train "
                           "it with `tfimb flow train CONFIG --workdir DIR` (or --resume).")
    cfg = config_lib.resolve_flow(yaml.safe_load((run_dir / "config.yaml").read_text()))
    results = json.loads((run_dir / RESULTS).read_text()) if (run_dir / RESULTS).exists() else {}
    shape, num_classes = results.get("image_shape"), results.get("num_classes")
    if shape is None or (cfg.model.class_conditional and num_classes is None):
        dataset = data_lib.load(cfg.data, None, stream=False)
        shape, num_classes = _in_memory(dataset.train).shape[1:], dataset.num_classes
    model = build_model(cfg, tuple(shape), num_classes)
    model.load_weights(run_dir / WEIGHTS)
    return cfg, model


def test_images(cfg: FlowConfig) -> np.ndarray:
    """The test split's uint8 images of a flow config's data."""
    return _in_memory(data_lib.load(cfg.data, None, stream=False).test)


def test_data(cfg: FlowConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images, class ids, class names) of the test split of a flow config's data."""
    dataset = data_lib.load(cfg.data, None, stream=False)
    return _in_memory(dataset.test), dataset.test.labels, list(dataset.class_names)


def _in_memory(split: data_lib.Split) -> np.ndarray:
    """A split's images, which flows always hold in memory (`stream=False`)."""
    assert split.images is not None, "flows load their data into memory"
    return split.images


def write_grid(images: ArrayLike, path: PathLike, columns: int | None = None) -> pathlib.Path:
    """uint8 images [N, H, W, C] -> one PNG grid (1-pixel gaps), written atomically."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, columns)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = images[k]
    _atomic_write(path, tf.io.encode_png(grid).numpy())
    return pathlib.Path(path)


def interpolation_latents(z: np.ndarray | Sequence[ArrayLike], steps: int) -> np.ndarray:
    """The paper's eq. 19 over a steps x steps grid of (phi, phi') in [0, pi/2]^2:
    z = cos(phi) (cos(phi') z1 + sin(phi') z2) + sin(phi) (cos(phi') z3 + sin(phi') z4)."""
    z1, z2, z3, z4 = (np.asarray(v, np.float32) for v in z[:4])
    angles = np.linspace(0.0, np.pi / 2, steps)
    return np.stack([np.cos(a) * (np.cos(b) * z1 + np.sin(b) * z2)
                     + np.sin(a) * (np.cos(b) * z3 + np.sin(b) * z4)
                     for a in angles for b in angles])


def interpolate(model: realnvp.RealNVP, images: np.ndarray, steps: int = 8) -> np.ndarray:
    """uint8 grid images decoded from the eq. 19 manifold through four images' latents."""
    steps = _checks.check_int("steps", steps, 2)
    if len(images) < 4:
        raise _checks.invalid_value("images", "4 images (the corners)", f"{len(images)} images")
    z = model.encode(images[:4]).numpy()
    return model.decode(interpolation_latents(z, steps)).numpy()
