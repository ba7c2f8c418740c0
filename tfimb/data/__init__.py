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

In memory or streamed (`data.stream`): small data is decoded once into a uint8 array (only the
examples the imbalance keeps) and fed from memory, the fastest path; data past memory streams:
only labels and where each image is are held (`tfimb.data.splits`), and images are read,
decoded and augmented inside `tf.data` (`tfimb.data.pipeline`). `stream: auto` streams when
the decoded training split would exceed `STREAM_AUTO_BYTES` (2 GiB), or when its images have
no fixed size (tensorflow-datasets sets such as ImageNet-LT); `true` always streams, `false`
never. Class counts, the imbalance subsample and the validation carve-out come from the labels
alone (`tfimb.data.imbalance`), before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import TYPE_CHECKING, Any


from tfimb import _checks
from tfimb.data import sources
from tfimb.data.imbalance import long_tail_counts, subsample, target_counts
from tfimb.data.pipeline import (IndexedEpoch, augmentation_padding, channel_statistics, examples,
                                 indexed_epoch, pipeline, shuffled_with_seeds, split_statistics)
from tfimb.data.sampling import (SAMPLINGS, class_probabilities, epoch_indices, resample,
                                 sampled_dataset)
from tfimb.data.sources import IMAGE_EXTENSIONS
from tfimb.data.splits import DataError, Dataset, FileImages, Split, TfdsImages, is_large

if TYPE_CHECKING:
    from tfimb.config import DataConfig, ImbalanceConfig

__all__ = ["DataError", "Dataset", "FileImages", "IMAGE_EXTENSIONS", "IndexedEpoch", "Split",
           "TfdsImages", "augmentation_padding", "channel_statistics", "class_probabilities",
           "epoch_indices", "examples", "folder_from_environment", "indexed_epoch",
           "load", "long_tail_counts", "pipeline", "resample", "sampled_dataset",
           "shuffled_with_seeds", "split_statistics", "subsample", "target_counts",
           "SAMPLINGS", "STREAM_AUTO_BYTES"]

STREAM_AUTO_BYTES = 2 << 30  # `stream: auto` streams a training split larger than this decoded.


def _streams(config: DataConfig, n_train: int, shape: tuple[int | None, ...]) -> bool:
    """Whether `config.stream` (auto | true | false) streams a training split of `n_train`
    images of decoded `shape` (None where the size varies)."""
    if config.stream in (True, False):
        return bool(config.stream)
    if any(d is None for d in shape):  # Sizes vary: only a stream takes them as they come.
        return True
    if config.image_size:
        shape = (config.image_size, config.image_size, shape[-1])
    return n_train * math.prod(shape) > STREAM_AUTO_BYTES  # type: ignore[arg-type]


def _image_shape(split: Split) -> tuple[int, int, int]:
    """The model's input shape for a split's images (the first image's, or the configured
    square `image_size`)."""
    if split.images is not None:
        return tuple(int(d) for d in split.images.shape[1:])  # type: ignore[return-value]
    streamed = split.streamed
    assert streamed is not None
    if streamed.image_size:
        return (streamed.image_size, streamed.image_size, streamed.channels)
    if streamed.shape is not None:
        return streamed.shape
    if isinstance(streamed, FileImages):
        return sources.first_image_shape(str(streamed.paths[0]), streamed.channels)
    raise DataError(f"Invalid value for key `data.image_size`. Expected the square size to "
                    f"feed the model: {streamed.name!r} images vary in size. Received: "
                    "data.image_size=None")


def load(config: DataConfig, imbalance: ImbalanceConfig | None = None,
         stream: Any = None) -> Dataset:
    """Load the configured data, carve validation, apply the imbalance: a `Dataset`, its
    splits in memory or streamed per `config.stream` (or `stream` when given)."""
    if stream is not None:
        config = dataclasses.replace(config, stream=stream)
    config = config.concrete()  # `auto` resolved; data.service checked against the source.
    if config.source == "folder":
        train, test, names = sources.list_folder(config)
        streams = bool(config.service) or _streams(config, len(train), _image_shape(train))
    elif config.source == "tfds":
        shape = sources.tfds_image_shape(config) if config.stream == "auto" else ()
        streams = config.stream is True or (config.stream == "auto" and _streams(
            config, _tfds_size(config), shape))
        train, test, names = (sources.list_tfds if streams else sources.load_tfds)(config)
    elif config.source == "digits":
        train, test, names = sources.load_digits()
        streams = False
    else:
        raise _checks.invalid_value("data.source", "'tfds', 'folder' or 'digits'", config.source)
    num_classes = len(names)
    train_index, validation_index = subsample(train.labels, config.validation_per_class,
                                              imbalance, config.seed, num_classes,
                                              config.validation_from)
    splits = [train.take(train_index), train.take(validation_index), test]
    if not streams and config.source == "folder":
        splits = [sources.materialize(s) for s in splits]  # Only the examples kept.
    shape = _image_shape(splits[0])
    if streams and not is_large(splits[0].streamed):  # Every image must be of this shape.
        for split in splits:
            if split.streamed is not None:
                split.streamed = dataclasses.replace(split.streamed, shape=shape)
    return Dataset(train=splits[0], validation=splits[1], test=splits[2], class_names=names,
                   num_classes=num_classes, image_shape=shape)


def _tfds_size(config: DataConfig) -> int:
    """The training split's size as tensorflow-datasets declares it (0 when it does not)."""
    try:
        import tensorflow_datasets as tfds

        info = tfds.builder(config.name, data_dir=config.dir).info
        return int(info.splits[config.train_split].num_examples)
    except Exception:  # Not prepared yet, or a mock without split metadata: decide by shape.
        return 0


def folder_from_environment() -> str | None:
    """The image folder named by $TFIMB_DATA_DIR when it exists (benchmarks, tests), else None."""
    path = os.environ.get("TFIMB_DATA_DIR")
    return path if path and pathlib.Path(path).is_dir() else None
