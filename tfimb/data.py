"""Image classification data: sources, imbalance, validation carve-out and tf.data pipelines.

Sources (`DataConfig.source`):

* `"tfds"`: a tensorflow-datasets image classification set, CIFAR-10 by default
  (`tfds.load(name, split, as_supervised=True)`).
* `"folder"`: any `root/<split>/<class>/*.{jpg,jpeg,png}` tree; classes are the sorted folder
  names of the training split (CIFAR-10's own order for a CIFAR-10 folder named by class).
* `"auto"` is resolved with the config (`tfimb.config`): the folder `data.dir` or
  $TFIMB_DATA_DIR when set, else tfds.
* `"digits"`: scikit-learn's handwritten digits (1,797 8x8 grey images, 10 classes), which ship
  inside the installed package: the offline default. A fixed stratified 2/3 : 1/3 train/test split.

Images are decoded once into a uint8 array in memory (parallel decode), then fed by
`tf.data` with shuffling, augmentation (zero-pad 4 + random crop at 32x32, proportionally less
for smaller images; horizontal flip) as a parallel
map, batching and prefetch. Per-channel normalisation lives in the model (`train.py`), so a
saved model takes raw pixel values.

Subsampling is deterministic by `seed`: each class's images are shuffled by a NumPy generator
seeded with `seed`, the first `validation_per_class` go to the validation split (balanced, like
the test split, and never taken from it), and the imbalanced training set takes the next ones.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import TYPE_CHECKING

import numpy as np

from tfimb import _checks
from tfimb._checks import ArrayLike
from tfimb.errors import TfimbError

if TYPE_CHECKING:  # TensorFlow and the config package are imported by the calls that use them.
    import tensorflow as tf

    from tfimb.config import DataConfig, ImbalanceConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DataError(TfimbError, ValueError):
    """Data that cannot be used: a missing folder, an empty class, an unreadable image..."""


@dataclasses.dataclass
class Split:
    images: np.ndarray   # uint8, (N, H, W, C)
    labels: np.ndarray   # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    """Training, validation (possibly empty) and test splits plus metadata."""

    train: Split
    validation: Split
    test: Split
    class_names: list
    num_classes: int

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.train.labels, minlength=self.num_classes)

    @property
    def evaluation(self) -> Split:
        """The split evaluated each epoch: validation when carved, else test."""
        return self.validation if len(self.validation) else self.test


# ---------------------------------------------------------------------------------------------
# Sources.


def _folder_files(root, split):
    split_dir = pathlib.Path(root) / split
    if not pathlib.Path(root).is_dir():
        raise DataError(f"Data folder not found: data.dir={str(root)!r} does not exist.")
    if not split_dir.is_dir():
        raise DataError(f"Split folder not found: {split_dir} (expected "
                        f"{root}/<split>/<class>/*.jpg).")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"No class folders in {split_dir} (expected {split_dir}/<class>/*.jpg).")
    files = {}
    for name in classes:
        found = sorted(str(p) for p in (split_dir / name).iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(f"Class folder {split_dir / name} holds no "
                            f"{'/'.join(IMAGE_EXTENSIONS)} image.")
        files[name] = found
    return files


def _decode_files(paths, image_size, channels):
    """Decode image files in parallel with tf.data into one uint8 array; a file that cannot be
    read, or whose size differs from the first image's (without `image_size`), is named."""
    import tensorflow as tf

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels,
                                   expand_animations=False)
        if image_size:
            image = tf.cast(tf.image.resize(image, (image_size, image_size), antialias=True)
                            + 0.5, tf.uint8)
        return image

    ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, tf.data.AUTOTUNE).batch(1024)
    try:
        return np.concatenate([b.numpy() for b in ds])
    except (tf.errors.InvalidArgumentError, ValueError):
        pass  # A file that does not decode, or images of different sizes: find which.
    shapes = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: tf.shape(decode(path)), tf.data.AUTOTUNE).batch(4096)
    try:
        shapes = np.concatenate([b.numpy() for b in shapes])
    except tf.errors.InvalidArgumentError:
        for path in paths:  # Slow, and only after a failure: the file that does not decode.
            try:
                decode(tf.constant(path))
            except Exception as error:
                raise DataError(f"Cannot read image {path}: {_reason(error)}") from None
        raise
    odd = np.flatnonzero(np.any(shapes != shapes[0], axis=1))
    if odd.size:
        def size(shape):
            return "x".join(str(d) for d in shape)

        raise DataError(
            f"Image {paths[odd[0]]} is {size(shapes[odd[0]])} (height x width x channels), but "
            f"the folder's images are {size(shapes[0])} (as {paths[0]}); {odd.size} of "
            f"{len(paths)} differ. Set data.image_size to resize every image to one square "
            "size, or remove the odd files.")
    raise RuntimeError("Decoding the images failed, though each decodes alone.")  # Unreached.


def _load_folder(config):
    train_files = _folder_files(config.dir, config.train_split)
    test_files = _folder_files(config.dir, config.test_split)
    classes = list(train_files)
    missing = sorted(set(classes) ^ set(test_files))
    if missing:
        raise DataError(f"Class folders {missing} are not in both {config.train_split}/ and "
                        f"{config.test_split}/ under {config.dir}.")
    first = train_files[classes[0]][0]
    channels = _channels_of(first)
    splits = []
    for files in (train_files, test_files):
        paths = [p for name in classes for p in files[name]]
        labels = np.concatenate([np.full(len(files[name]), i) for i, name in enumerate(classes)])
        splits.append(Split(_decode_files(paths, config.image_size, channels),
                            labels.astype(np.int64)))
    return splits[0], splits[1], classes


def _channels_of(path):
    import tensorflow as tf

    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except Exception as error:
        raise DataError(f"Cannot read image {path}: {_reason(error)}") from None
    return int(image.shape[-1])


def _reason(error):
    """A TensorFlow op error's own words, without its node and op annotations."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\].*$", "", text)


def _load_tfds(config):
    import tensorflow_datasets as tfds

    splits = []
    info = None
    for split in (config.train_split, config.test_split):
        try:
            ds, info = tfds.load(config.name, split=split, as_supervised=True,
                                 data_dir=config.dir, with_info=True)
        except Exception as error:  # Download refused, unknown name, corrupt files...
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else \
                type(error).__name__
            raise DataError(
                f"tensorflow-datasets could not load {config.name!r} (split {split!r}, "
                f"data_dir={config.dir!r}): {reason}. To read an image folder "
                "(root/<split>/<class>/*.jpg) instead, pass --set data.source=folder --set "
                "data.dir=PATH, or set TFIMB_DATA_DIR=PATH for a config with data.source: "
                "auto.") from None
        batches = list(ds.batch(4096).prefetch(2).as_numpy_iterator())
        splits.append(Split(np.concatenate([b[0] for b in batches]).astype(np.uint8),
                            np.concatenate([b[1] for b in batches]).astype(np.int64)))
    label = info.features["label"]
    names = getattr(label, "names", None) or [str(i) for i in range(label.num_classes)]
    return splits[0], splits[1], list(names)


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    # Fixed stratified split (independent of the experiment seed): a third of each class to test.
    rng = np.random.default_rng(20170301)
    test = np.zeros(len(labels), bool)
    for c in range(10):
        index = rng.permutation(np.flatnonzero(labels == c))
        test[index[: len(index) // 3]] = True
    return (Split(images[~test], labels[~test]), Split(images[test], labels[test]),
            [str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------
# Imbalance.


def long_tail_counts(n_max: int, num_classes: int, factor: float) -> np.ndarray:
    """Cui et al.'s exponential profile: class c keeps `int(n_max * factor^(-c / (C - 1)))`.

    >>> long_tail_counts(5000, 10, 100).tolist()
    [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    exponents = np.arange(num_classes) / (num_classes - 1)
    return np.floor(n_max * np.power(float(factor), -exponents) + 1e-9).astype(np.int64)


def target_counts(available: ArrayLike, imbalance: ImbalanceConfig | None) -> np.ndarray:
    """Training images to keep per class, from the available counts and the imbalance config."""
    available = np.asarray(available, np.int64)
    num_classes = len(available)
    if imbalance is None:
        return available.copy()
    if imbalance.long_tail_factor is not None:
        return long_tail_counts(int(available.min()), num_classes, imbalance.long_tail_factor)
    try:
        minority = _checks.check_classes("imbalance.minority", imbalance.minority or [],
                                         num_classes, allow_empty=True)
    except ValueError as error:  # A class index the data does not have: say which key.
        raise DataError(str(error).replace("for argument `", "for key `", 1)) from None
    wanted = available.copy()
    for c in range(num_classes):
        if c in minority:
            wanted[c] = imbalance.minority_count
        elif imbalance.majority_count is not None:
            wanted[c] = min(imbalance.majority_count, available[c])
    return wanted


def _subsample(split, validation_per_class, imbalance, seed, num_classes):
    """(train, validation) index arrays into `split`, deterministic by seed."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(split.labels == c)) for c in range(num_classes)]
    available = np.array([len(p) for p in per_class]) - validation_per_class
    short = np.flatnonzero(available < 1)
    if short.size:
        raise DataError(f"Invalid value for key `data.validation_per_class`. Classes "
                        f"{short.tolist()} have only {[len(per_class[c]) for c in short]} "
                        "training images; leave at least one for training. Received: "
                        f"data.validation_per_class={validation_per_class}")
    wanted = target_counts(available, imbalance)
    too_many = np.flatnonzero(wanted > available)
    if too_many.size:
        c = int(too_many[0])
        raise DataError(f"Class {c} has {available[c]} training images available"
                        f"{' after the validation carve-out' if validation_per_class else ''}, "
                        f"fewer than the {wanted[c]} asked for by the imbalance config.")
    validation = np.concatenate([p[:validation_per_class] for p in per_class])
    train = np.concatenate([p[validation_per_class: validation_per_class + n]
                            for p, n in zip(per_class, wanted)])
    return np.sort(train), np.sort(validation)


def load(config: DataConfig, imbalance: ImbalanceConfig | None = None) -> Dataset:
    """Load the configured data, carve validation, apply the imbalance: a `Dataset`."""
    if config.source == "folder":
        train, test, names = _load_folder(config)
    elif config.source == "tfds":
        train, test, names = _load_tfds(config)
    elif config.source == "digits":
        train, test, names = _load_digits()
    else:
        raise _checks.invalid_value("data.source", "'tfds', 'folder' or 'digits'", config.source)
    num_classes = len(names)
    train_index, validation_index = _subsample(train, config.validation_per_class, imbalance,
                                               config.seed, num_classes)
    return Dataset(
        train=Split(train.images[train_index], train.labels[train_index]),
        validation=Split(train.images[validation_index], train.labels[validation_index]),
        test=test, class_names=names, num_classes=num_classes)


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of uint8 images, in [0, 255] units (float64)."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return x.mean(axis=0), x.var(axis=0)


# ---------------------------------------------------------------------------------------------
# tf.data pipelines.


def augmentation_padding(height: int) -> int:
    """Padding of the random crop: 4 pixels at 32x32 (the CIFAR recipe), height / 8 in general."""
    return max(1, round(height / 8))


def _augment(image, seed):
    """Zero-pad (4 pixels at 32x32), random crop back, random horizontal flip (stateless)."""
    import tensorflow as tf

    height, width = image.shape[0], image.shape[1]
    pad = augmentation_padding(height)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(padded, (height, width, image.shape[2]), crop_seed)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def pipeline(split: Split, batch_size: int, training: bool, seed: int = 0, augment: bool = True,
             drop_remainder: bool = False, epoch: int | None = None) -> tf.data.Dataset:
    """A batched `tf.data.Dataset` of (float32 images in [0, 255], int32 labels).

    Training: shuffled (seeded) and augmented with per-example stateless seeds. With `epoch`
    the dataset is that one epoch, its order and augmentation a function of (seed, epoch), so a
    resumed epoch (or another worker) sees the same batches; without it, each iteration is the
    next epoch. Evaluation: in order, no augmentation. `drop_remainder` drops the last partial
    batch (needed under several replicas, where a remainder smaller than the number of replicas
    leaves a replica an empty batch that batch normalisation rejects).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels.astype(np.int32)))
    if training:
        ds, seeds = shuffled_with_seeds(ds, len(split), seed, epoch)
        if augment:
            ds = tf.data.Dataset.zip(ds, seeds).map(
                lambda xy, s: (_augment(xy[0], s), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda x, y: (tf.cast(x, tf.float32), y))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def shuffled_with_seeds(ds: tf.data.Dataset, buffer_size: int, seed: int,
                        epoch: int | None = None) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(`ds` shuffled, a dataset of per-example [2] seeds for stateless random ops).

    Without `epoch`, every iteration reshuffles and draws new seeds (the next epoch); with it,
    both are fixed functions of (seed, epoch), the same in every process and on every resume.
    """
    import tensorflow as tf

    reshuffle = epoch is None
    if epoch is not None:
        seed = int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])
    ds = ds.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=reshuffle)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=reshuffle).batch(2)
    return ds, seeds


def folder_from_environment() -> str | None:
    """The image folder named by $TFIMB_DATA_DIR when it exists (benchmarks, tests), else None."""
    path = os.environ.get("TFIMB_DATA_DIR")
    return path if path and pathlib.Path(path).is_dir() else None
