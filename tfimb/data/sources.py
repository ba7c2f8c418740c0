"""Where the examples come from: an image folder, tensorflow-datasets, or scikit-learn's digits.

Each source gives (training split, test split, class names). A folder is listed (paths and
labels) without decoding; tensorflow-datasets gives its labels with image decoding skipped
when the data streams. `materialize` then decodes a folder split's selected files into memory
when the data does not stream.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from tfimb.data.splits import DataError, FileImages, Split, TfdsImages, decode_image, reason

if TYPE_CHECKING:
    from tfimb.config import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------
# Image folders: root/<split>/<class>/*.jpg


def _folder_files(root: str, split: str) -> dict[str, list[str]]:
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


def first_image_shape(path: str, channels: int | None = None) -> tuple[int, int, int]:
    """The decoded shape of one image file (named when it cannot be read)."""
    import tensorflow as tf

    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels or 0,
                                   expand_animations=False)
    except Exception as error:
        raise DataError(f"Cannot read image {path}: {reason(error)}") from None
    return tuple(int(d) for d in image.shape)  # type: ignore[return-value]


def list_folder(config: DataConfig) -> tuple[Split, Split, list[str]]:
    """Both splits of an image folder as streamed splits (paths and labels; nothing decoded)."""
    root = str(config.dir)  # Set for a folder (checked with the config).
    train_files = _folder_files(root, config.train_split)
    test_files = _folder_files(root, config.test_split)
    classes = list(train_files)
    missing = sorted(set(classes) ^ set(test_files))
    if missing:
        raise DataError(f"Class folders {missing} are not in both {config.train_split}/ and "
                        f"{config.test_split}/ under {config.dir}.")
    channels = first_image_shape(train_files[classes[0]][0])[-1]
    splits = []
    for files in (train_files, test_files):
        paths = np.array([p for name in classes for p in files[name]])
        labels = np.concatenate([np.full(len(files[name]), i) for i, name in enumerate(classes)])
        splits.append(Split(None, labels.astype(np.int64),
                            FileImages(paths, channels, config.image_size)))
    return splits[0], splits[1], classes


def materialize(split: Split) -> Split:
    """A folder split decoded into memory (parallel, with tf.data); a file that cannot be read,
    or whose size differs from the first image's (without `data.image_size`), is named."""
    import tensorflow as tf

    files = split.streamed
    assert isinstance(files, FileImages)
    paths = files.paths

    def decode(path):
        return decode_image(tf.io.read_file(path), files.channels, files.image_size)

    if not len(paths):
        shape = (files.image_size, files.image_size) if files.image_size else (0, 0)
        return Split(np.zeros((0, *shape, files.channels), np.uint8), split.labels)
    ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, tf.data.AUTOTUNE).batch(1024)
    try:  # Filled in place: one copy of the decoded split, not its batches and their join.
        images, filled = None, 0
        for batch in ds:
            if images is None:
                images = np.empty((len(paths), *batch.shape[1:]), np.uint8)
            images[filled:filled + len(batch)] = batch.numpy()  # ValueError: another size.
            filled += len(batch)
        return Split(images, split.labels)
    except (tf.errors.InvalidArgumentError, ValueError):
        pass  # A file that does not decode, or images of different sizes: find which.
    check_files(paths, decode)
    raise RuntimeError("Decoding the images failed, though each decodes alone.")  # Unreached.


def check_files(paths: np.ndarray, decode: Any) -> None:
    """Raise a DataError naming the first file that does not decode, or whose decoded shape
    differs from the first one's."""
    import tensorflow as tf

    shapes = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: tf.shape(decode(path)), tf.data.AUTOTUNE).batch(4096)
    try:
        found = np.concatenate([b.numpy() for b in shapes])
    except tf.errors.InvalidArgumentError:
        for path in paths:  # Slow, and only after a failure: the file that does not decode.
            try:
                decode(tf.constant(path))
            except Exception as error:
                raise DataError(f"Cannot read image {path}: {reason(error)}") from None
        raise
    odd = np.flatnonzero(np.any(found != found[0], axis=1))
    if odd.size:
        def size(shape):
            return "x".join(str(d) for d in shape)

        raise DataError(
            f"Image {paths[odd[0]]} is {size(found[odd[0]])} (height x width x channels), but "
            f"the folder's images are {size(found[0])} (as {paths[0]}); {odd.size} of "
            f"{len(paths)} differ. Set data.image_size to resize every image to one square "
            "size, or remove the odd files.")


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets


def _tfds_load(config: DataConfig, split: str, **kwargs: Any) -> Any:
    import tensorflow_datasets as tfds

    try:
        return tfds.load(config.name, split=split, as_supervised=True, data_dir=config.dir,
                         with_info=True, **kwargs)
    except Exception as error:  # Download refused, unknown name, corrupt files...
        text = str(error).strip().splitlines()[0][:300] if str(error).strip() else \
            type(error).__name__
        raise DataError(
            f"tensorflow-datasets could not load {config.name!r} (split {split!r}, "
            f"data_dir={config.dir!r}): {text}. To read an image folder "
            "(root/<split>/<class>/*.jpg) instead, pass --set data.source=folder --set "
            "data.dir=PATH, or set TFIMB_DATA_DIR=PATH for a config with data.source: "
            "auto.") from None


def _class_names(info: Any) -> list[str]:
    label = info.features[info.supervised_keys[1]]
    return list(getattr(label, "names", None) or [str(i) for i in range(label.num_classes)])


def tfds_image_shape(config: DataConfig) -> tuple[int | None, ...]:
    """The image feature's shape as tensorflow-datasets declares it (None: varies)."""
    _, info = _tfds_load(config, config.train_split)
    return tuple(info.features[info.supervised_keys[0]].shape)


def load_tfds(config: DataConfig) -> tuple[Split, Split, list[str]]:
    """Both splits decoded into memory (resized to `data.image_size` when it is set)."""
    import tensorflow as tf

    size = config.image_size
    splits, info = [], None
    for split in (config.train_split, config.test_split):
        ds, info = _tfds_load(config, split)
        if size:
            ds = ds.map(lambda x, y: (tf.cast(tf.image.resize(x, (size, size), antialias=True)
                                              + 0.5, tf.uint8), y), tf.data.AUTOTUNE)
        batches = list(ds.batch(4096).prefetch(2).as_numpy_iterator())
        splits.append(Split(np.concatenate([b[0] for b in batches]).astype(np.uint8),
                            np.concatenate([b[1] for b in batches]).astype(np.int64)))
    return splits[0], splits[1], _class_names(info)


def list_tfds(config: DataConfig) -> tuple[Split, Split, list[str]]:
    """Both splits as streamed splits: their labels, read with image decoding skipped."""
    import tensorflow_datasets as tfds

    _, info = _tfds_load(config, config.train_split)  # Names the image feature to skip.
    image_key = info.supervised_keys[0]
    declared = tuple(info.features[image_key].shape)
    channels = int(declared[-1] or 3)
    fixed = None if None in declared or config.image_size else declared
    splits = []
    for split in (config.train_split, config.test_split):
        ds, _ = _tfds_load(config, split, decoders={image_key: tfds.decode.SkipDecoding()})
        labels = np.concatenate([np.zeros(0, np.int64)] + [
            b for b in ds.map(lambda image, label: label).batch(65536).as_numpy_iterator()])
        splits.append(Split(None, labels.astype(np.int64), TfdsImages(
            config.name, split, config.dir, image_key, np.arange(len(labels)), len(labels),
            channels, config.image_size, fixed)))
    return splits[0], splits[1], _class_names(info)


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits (shipped with the package: the offline default)


def load_digits() -> tuple[Split, Split, list[str]]:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
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
