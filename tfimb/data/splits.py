"""What a split is: labels, and images held in memory or read as they are needed (streamed).

A split streams when its images would not fit in memory (`data.stream`, see `tfimb.data`): it
keeps only its labels and where each image is (`FileImages`: one file per example;
`TfdsImages`: positions in a tensorflow-datasets split), and `tfimb.data.pipeline` reads,
decodes and augments the images inside `tf.data`. Everything that needs only labels (class
counts, the imbalance subsample, the validation carve-out) works the same on both kinds.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Union

import numpy as np

from tfimb.errors import TfimbError

if TYPE_CHECKING:  # TensorFlow is imported by the calls that read images.
    import tensorflow as tf

# Above this size (pixels a side) images get ImageNet-style transforms (random-resized crop for
# training, resize and center crop for evaluation) instead of CIFAR's pad-and-crop.
LARGE_IMAGE = 64
# Streamed records that cannot be indexed (tensorflow-datasets') are shuffled in a buffer of
# this many encoded images (about 1 GiB of ImageNet JPEGs); files are shuffled whole (paths).
RECORD_SHUFFLE_BUFFER = 8192


class DataError(TfimbError, ValueError):
    """Data that cannot be used: a missing folder, an empty class, an unreadable image..."""


def reason(error: BaseException) -> str:
    """A TensorFlow op error's own words, without its node and op annotations."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\].*$", "", text)


def decode_image(data: tf.Tensor, channels: int, image_size: int | None,
                 keep_large: bool = False) -> tf.Tensor:
    """Encoded JPEG/PNG bytes -> uint8 [H, W, channels], resized to a square of `image_size`
    when it is set, except large images with `keep_large` (streamed ImageNet-style data, whose
    transforms in `tfimb.data.pipeline` crop and resize)."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    if image_size and not (keep_large and image_size > LARGE_IMAGE):
        image = tf.cast(tf.image.resize(image, (image_size, image_size), antialias=True) + 0.5,
                        tf.uint8)
    return image


def checked_shape(image: tf.Tensor, shape: tuple[int, int, int] | None,
                  what: list) -> tf.Tensor:
    """`image` with its static `shape` set, after an in-graph check that names `what` (a file
    of another size in a streamed folder fails the step saying which)."""
    import tensorflow as tf

    if shape is None:
        return image
    check = tf.debugging.Assert(tf.reduce_all(tf.equal(tf.shape(image), shape)), what + [
        "has shape", tf.shape(image), f"but the data's images are {list(shape)}: set "
        "data.image_size to resize every image to one square size, or remove the odd files."],
        summarize=4)
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(image), shape)


@dataclasses.dataclass
class FileImages:
    """A streamed split's images: one image file per example, decoded when read."""

    paths: np.ndarray              # str, one per example
    channels: int
    image_size: int | None
    shape: tuple[int, int, int] | None = None  # every image's, once known (not large ones)

    def take(self, index: np.ndarray) -> FileImages:
        return dataclasses.replace(self, paths=self.paths[index])

    def keys(self, labels: np.ndarray) -> tf.data.Dataset:
        """(path, label) in order: cheap to shuffle whole, like an in-memory split."""
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((self.paths, labels.astype(np.int32)))

    def shuffle_buffer(self, n: int) -> int:
        return n

    def decode(self, path: tf.Tensor) -> tf.Tensor:
        import tensorflow as tf

        image = decode_image(tf.io.read_file(path), self.channels, self.image_size, True)
        return checked_shape(image, self.shape, ["Image", path])


@dataclasses.dataclass
class TfdsImages:
    """A streamed split's images: examples of a tensorflow-datasets split at `positions` (in
    record order), read with image decoding skipped and decoded in the pipeline."""

    name: str
    split: str
    data_dir: str | None
    image_key: str
    positions: np.ndarray          # int64, sorted (repeated where an epoch re-samples)
    total: int                     # examples in the whole tfds split
    channels: int
    image_size: int | None
    shape: tuple[int, int, int] | None = None  # every image's, once known (not large ones)

    def take(self, index: np.ndarray) -> TfdsImages:
        return dataclasses.replace(self, positions=self.positions[index])

    def keys(self, labels: np.ndarray) -> tf.data.Dataset:
        """(encoded image, label) of the selected examples, in record order; a position
        selected k times (a re-sampled epoch, `tfimb.data.sampling`) comes k times."""
        import tensorflow as tf
        import tensorflow_datasets as tfds

        ds = tfds.load(self.name, split=self.split, data_dir=self.data_dir, as_supervised=True,
                       decoders={self.image_key: tfds.decode.SkipDecoding()})
        times = np.bincount(self.positions, minlength=self.total)
        times_t = tf.constant(times.astype(np.int64))
        ds = ds.enumerate().filter(lambda i, example: tf.gather(times_t, i) > 0)
        if times.max(initial=0) > 1:
            ds = ds.flat_map(lambda i, example: tf.data.Dataset.from_tensors(
                (i, example)).repeat(tf.gather(times_t, i)))
        return ds.map(lambda i, example: (example[0], tf.cast(example[1], tf.int32)))

    def shuffle_buffer(self, n: int) -> int:
        return min(n, RECORD_SHUFFLE_BUFFER)

    def decode(self, data: tf.Tensor) -> tf.Tensor:
        image = decode_image(data, self.channels, self.image_size, True)
        return checked_shape(image, self.shape, [f"An image of {self.name!r} ({self.split})"])


Images = Union[FileImages, TfdsImages]


def is_large(images: Images | None) -> bool:
    """Streamed images that get ImageNet-style transforms (see `LARGE_IMAGE`)."""
    return bool(images is not None and images.image_size and images.image_size > LARGE_IMAGE)


@dataclasses.dataclass
class Split:
    """One split: `labels`, and `images` (uint8 (N, H, W, C)) in memory or, when the split
    streams, `streamed` (where each example's image is read from) and `images` None."""

    images: np.ndarray | None      # uint8, (N, H, W, C); None when streamed
    labels: np.ndarray             # int64, (N,)
    streamed: Images | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Split:
        """The examples at `index`, of the same kind."""
        return Split(None if self.images is None else self.images[index], self.labels[index],
                     None if self.streamed is None else self.streamed.take(index))


@dataclasses.dataclass
class Dataset:
    """Training, validation (possibly empty) and test splits plus metadata."""

    train: Split
    validation: Split
    test: Split
    class_names: list
    num_classes: int
    # The model's input (H, W, C); by default the in-memory training images' shape.
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.image_shape is None and self.train.images is not None:
            self.image_shape = tuple(int(d) for d in self.train.images.shape[1:])  # type: ignore

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.train.labels, minlength=self.num_classes)

    @property
    def evaluation(self) -> Split:
        """The split evaluated each epoch: validation when carved, else test."""
        return self.validation if len(self.validation) else self.test

    @property
    def streamed(self) -> bool:
        return self.train.streamed is not None
