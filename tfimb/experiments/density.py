"""`tfimb flow train / evaluate / sample / interpolate`: RealNVP runs under tf.distribute.

Training follows the paper and the authors' code: Adam (default betas), L2 on the weight-norm
scales, gradient clipping at a global norm, uniform dequantisation noise drawn per step, random
horizontal flips, and a numerics check that stops training with a clear message before a
checkpoint of a non-finite step can be written.

A run directory holds `config.yaml`, `history.csv` (per epoch: training bits/dim in training
mode, evaluation bits/dim in inference mode), `logs/` (TensorBoard: bits/dim and samples),
`checkpoints/` (every epoch; `--resume` continues), `model.weights.h5`, `samples.png` and, written
atomically once the run has finished, `results.json`.
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
from tfimb.flows import realnvp
from tfimb.runtime import rundir
from tfimb.runtime import run as run_lib
from tfimb.runtime.loop import TrainingLoop

RESULTS = rundir.RESULTS
WEIGHTS = "model.weights.h5"


FlowRunError = rundir.RunDirError  # A run directory that cannot be used as asked.
DataError = data_lib.DataError  # Data that cannot be used (missing folder, tfds failure...).
_atomic_write = rundir.atomic_write


def _subset(split, limit, seed):
    if limit is None or limit >= len(split):
        return split.images
    index = np.random.default_rng(seed).permutation(len(split))[:limit]
    return split.images[np.sort(index)]


def pipeline(images: np.ndarray, batch_size: int, training: bool, seed: int = 0,
             flip: bool = True, drop_remainder: bool = False,
             epoch: int | None = None) -> tf.data.Dataset:
    """uint8 images -> batches (shuffled and randomly flipped when training; with `epoch`, that
    one epoch, its order and flips a function of (seed, epoch), as `tfimb.data.pipeline`)."""
    ds = tf.data.Dataset.from_tensor_slices(images)
    if training:
        ds, seeds = data_lib.shuffled_with_seeds(ds, min(len(images), 20000), seed, epoch)
        if flip:
            ds = tf.data.Dataset.zip(ds, seeds).map(
                tf.image.stateless_random_flip_left_right, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder or training)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def build_model(cfg: FlowConfig, image_shape: Sequence[int]) -> realnvp.RealNVP:
    m = cfg.model
    model = realnvp.RealNVP(image_shape, num_scales=m.num_scales, num_blocks=m.num_blocks,
                            num_filters=m.num_filters, momentum=m.momentum, epsilon=m.epsilon,
                            alpha=m.alpha, l2=cfg.train.l2, seed=cfg.train.seed)
    model.build()
    return model


def build_compiled_model(cfg: FlowConfig, image_shape: Sequence[int]) -> realnvp.RealNVP:
    """`build_model`, compiled with the training optimizer: Adam (default betas) at
    `train.learning_rate`, gradients clipped to global norm `train.clip_norm`."""
    model = build_model(cfg, image_shape)
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate,
                                                  global_clipnorm=cfg.train.clip_norm))
    return model


def _sample_callback(log_dir, n=16):
    class SampleImages(keras.callbacks.Callback):
        """Samples (temperature 1 and 0.7) to TensorBoard at the end of every epoch."""
        def __init__(self):
            super().__init__()
            self.writer = tf.summary.create_file_writer(str(log_dir / "samples"))

        def on_epoch_end(self, epoch, logs=None):
            with self.writer.as_default():
                for temperature in (1.0, 0.7):
                    images = self.model.sample(n, temperature, seed=epoch)
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
        self.dataset = data_lib.load(cfg.data, None, stream=False)
        self.train_images = _subset(self.dataset.train, cfg.train.max_train_images,
                                    cfg.train.seed)
        self.eval_images = _subset(self.dataset.evaluation, cfg.train.max_eval_images,
                                   cfg.train.seed + 1)
        if len(self.train_images) // cfg.train.batch_size < 1:
            raise data_lib.DataError(
                f"Invalid value for key `train.batch_size`. Expected at most the "
                f"{len(self.train_images)} training images. Received: {cfg.train.batch_size}")

    def build(self, cfg: FlowConfig) -> realnvp.RealNVP:
        self.model = build_compiled_model(cfg, self.train_images.shape[1:])
        return self.model

    def steps_per_epoch(self, cfg: FlowConfig, replicas: int) -> int:
        return len(self.train_images) // cfg.train.batch_size

    def train_data(self, cfg: FlowConfig, epoch: int, replicas: int) -> tf.data.Dataset:
        return pipeline(self.train_images, cfg.train.batch_size, True, cfg.train.seed,
                        cfg.train.flip, drop_remainder=True, epoch=epoch)

    def eval_data(self, cfg: FlowConfig, replicas: int) -> tf.data.Dataset:
        return pipeline(self.eval_images, cfg.train.batch_size, False,
                        drop_remainder=replicas > 1)

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
        return {
            "bits_per_dim": {"train": history[-1].get("bits_per_dim") if history else None,
                             "test": evaluate_images(self.model, self.eval_images,
                                                     cfg.train.batch_size)},
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
        write_grid(self.model.sample(64, 1.0, seed=0).numpy(), run_dir / "samples.png")


def run(cfg: FlowConfig, run_dir: PathLike, resume: bool = False,
        verbose: int | Literal["auto"] = "auto",
        callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict[str, Any]:
    """Train RealNVP per `cfg` into `run_dir`; evaluate; write samples and results.json.

    The run skeleton (`tfimb.runtime.run`) with `FlowExperiment`: every strategy trains
    through `tfimb.runtime.loop.TrainingLoop`; under several workers only the chief writes.
    `callbacks`: extra Keras callbacks (after tfimb's own)."""
    return run_lib.run(FlowExperiment(), cfg, run_dir, resume, verbose, callbacks)


def evaluate_images(model: realnvp.RealNVP, images: np.ndarray, batch_size: int,
                    seed: int = 1234) -> float:
    """Mean bits/dim of uint8 images (inference mode, uniform dequantisation, fixed seed)."""
    @tf.function
    def batch_bpd(batch, seed):
        return model.bits_per_dim(batch, noise="uniform", seed=seed)

    total, count = 0.0, 0
    for i, start in enumerate(range(0, len(images), batch_size)):
        batch = images[start:start + batch_size]
        bpd = batch_bpd(tf.constant(batch), tf.constant([seed, i], tf.int32)).numpy()
        total += float(bpd.sum())
        count += len(batch)
    return total / count


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
    shape = results.get("image_shape")
    if shape is None:
        shape = _in_memory(data_lib.load(cfg.data, None, stream=False).train).shape[1:]
    model = build_model(cfg, tuple(shape))
    model.load_weights(run_dir / WEIGHTS)
    return cfg, model


def test_images(cfg: FlowConfig) -> np.ndarray:
    """The test split's uint8 images of a flow config's data."""
    return _in_memory(data_lib.load(cfg.data, None, stream=False).test)


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
