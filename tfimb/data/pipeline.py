"""tf.data pipelines: shuffling, augmentation, batching; images read from memory or streamed.

Training batches are a function of (seed, epoch): the split's examples are shuffled with a seed
drawn from both, and every example gets its own stateless seed for its augmentation, so a
resumed epoch, or another worker, sees the same batches. A streamed split shuffles what is
cheap to hold (file paths: the whole split, in the same order as the in-memory split would be;
tensorflow-datasets' encoded records: a bounded buffer), then reads, decodes and augments in
parallel maps.

Augmentation: CIFAR-size images get zero-padding (4 pixels at 32x32, height / 8 in general), a
random crop back and a horizontal flip; streamed large images (`data.image_size` above
`tfimb.data.splits.LARGE_IMAGE`) the ImageNet transforms: a random-resized crop (8-100% of the
area, aspect ratio 3/4-4/3) and a flip for training, a resize of the shorter side to
`image_size / 0.875` and a center crop for evaluation. Per-channel normalisation lives in the
model, so a saved model takes raw pixel values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from tfimb.data.splits import FileImages, Split, is_large

if TYPE_CHECKING:
    import tensorflow as tf

# How many training images estimate a streamed split's channel statistics.
STATISTICS_SAMPLE = 5000


def augmentation_padding(height: int) -> int:
    """Padding of the random crop: 4 pixels at 32x32 (the CIFAR recipe), height / 8 in general."""
    return max(1, round(height / 8))


def _pad_crop_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Zero-pad (4 pixels at 32x32), random crop back, random horizontal flip (stateless)."""
    import tensorflow as tf

    height, width = image.shape[0], image.shape[1]
    pad = augmentation_padding(height)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(padded, (height, width, image.shape[2]), crop_seed)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """ImageNet training transform: a random crop of 8-100% of the area and aspect ratio
    3/4-4/3, resized to size x size, and a random horizontal flip (stateless)."""
    import tensorflow as tf

    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seed=crop_seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, extent)
    resized = tf.image.resize(crop, (size, size), antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.image.stateless_random_flip_left_right(resized, flip_seed)


def _resize_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """ImageNet evaluation transform: the shorter side to size / 0.875, the central size x size."""
    import tensorflow as tf

    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = math.ceil(size / 0.875) / tf.reduce_min(shape)
    resized = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.image.resize_with_crop_or_pad(resized, size, size)


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


def _transform(split: Split, training: bool, augment: bool
               ) -> Callable[[tf.Tensor, tf.Tensor | None], tf.Tensor]:
    """`transform(key, seed)`: one example's uint8 image from its key (an in-memory image, a
    path or an encoded record) and its stateless seed, as training (augmented) or evaluation
    reads it."""
    streamed = split.streamed
    decode = streamed.decode if streamed is not None else (lambda x: x)
    large = is_large(streamed)
    size = int(streamed.image_size or 0) if streamed is not None and large else 0
    if training and augment:
        if large:
            return lambda x, s: _random_resized_crop(decode(x), s, size)
        return lambda x, s: _pad_crop_flip(decode(x), s)
    if large:
        return lambda x, s: _resize_center_crop(decode(x), size)
    return lambda x, s: decode(x)


def examples(split: Split, training: bool, seed: int = 0, augment: bool = True,
             epoch: int | None = None, num_shards: int = 1,
             shard_index: int = 0) -> tf.data.Dataset:
    """The split's (uint8 image, int32 label) examples, unbatched: shuffled and augmented for
    training, in order and decoded (center-cropped when large) for evaluation. With
    `num_shards`, only every num_shards-th example from `shard_index` on, chosen after the
    shuffle and before any image is read: a worker reads only its share."""
    import tensorflow as tf

    streamed = split.streamed
    if streamed is None:
        ds = tf.data.Dataset.from_tensor_slices((split.images, split.labels.astype(np.int32)))
        buffer = len(split)
    else:
        ds, buffer = streamed.keys(split.labels), streamed.shuffle_buffer(len(split))
    transform = _transform(split, training, augment)
    auto = tf.data.AUTOTUNE
    if training:
        ds, seeds = shuffled_with_seeds(ds, buffer, seed, epoch)
        both = tf.data.Dataset.zip(ds, seeds)
        if num_shards > 1:  # Seeds stay with their examples: each is augmented as unsharded.
            both = both.shard(num_shards, shard_index)
        if streamed is None and not augment:
            return both.map(lambda xy, s: xy)
        return both.map(lambda xy, s: (transform(xy[0], s), xy[1]), num_parallel_calls=auto)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    if streamed is None:
        return ds
    return ds.map(lambda x, y: (transform(x, None), y), num_parallel_calls=auto)


def batch_count(n: int, batch_size: int, drop_remainder: bool) -> int:
    """Batches of `batch_size` in n examples (the last partial one dropped or kept)."""
    return n // batch_size if drop_remainder else -(-n // batch_size)


@dataclasses.dataclass
class IndexedEpoch:
    """One worker's share of a training epoch of a split read by position (an image folder),
    addressed batch by batch: batch k holds the examples `pipeline(...)` puts in its k-th
    batch, with the same per-example seeds, whichever process builds it (the tf.data service's
    workers build them out of order; `tfimb.data.service` puts them back in order)."""

    split: Split
    batch_size: int
    augment: bool
    order: np.ndarray   # positions in the split, in this share's order
    seeds: np.ndarray   # [len(order), 2] stateless seeds, one per example
    num_batches: int
    drop_remainder: bool = False  # batches of exactly batch_size (a static shape)
    _cache: tuple[tf.Tensor, tf.Tensor, tf.Tensor] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False)

    def batches(self, first: int = 0, last: int | None = None) -> tf.data.Dataset:
        """(k, uint8 images, int32 labels) for batches first..last-1, in order, built from
        their index alone (a `Dataset.range` source the tf.data service splits dynamically)."""
        import tensorflow as tf

        keys, labels, seeds = self._tensors()
        transform, b, n = _transform(self.split, True, self.augment), self.batch_size, \
            len(self.order)

        def batch(k):
            lo = k * b
            hi = tf.minimum(lo + b, n)
            one = tf.data.Dataset.from_tensor_slices((keys[lo:hi], labels[lo:hi], seeds[lo:hi]))
            return (one.map(lambda x, y, s: (transform(x, s), y),
                            num_parallel_calls=tf.data.AUTOTUNE)
                    .batch(b, drop_remainder=self.drop_remainder)
                    .map(lambda x, y: (k, x, y)))

        last = self.num_batches if last is None else last
        return tf.data.Dataset.range(first, last).interleave(
            batch, cycle_length=2, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _tensors(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(paths, labels, seeds) in this share's order, made once (a batch built alone, when
        the service loses it, reuses them)."""
        import tensorflow as tf

        if self._cache is None:
            streamed = self.split.streamed
            assert isinstance(streamed, FileImages), "only image folders are read by position"
            self._cache = (tf.constant(streamed.paths[self.order]),
                           tf.constant(self.split.labels[self.order].astype(np.int32)),
                           tf.constant(self.seeds))
        return self._cache


def indexed_epoch(split: Split, batch_size: int, seed: int, epoch: int, augment: bool = True,
                  drop_remainder: bool = False, num_shards: int = 1,
                  shard_index: int = 0) -> IndexedEpoch:
    """The epoch `pipeline(split, batch_size, True, seed, augment, drop_remainder, epoch,
    num_shards, shard_index)` reads, as positions and seeds (computed from the labels' count
    alone: the same shuffle over the positions 0..n-1)."""
    import tensorflow as tf

    n = len(split)
    buffer = split.streamed.shuffle_buffer(n) if split.streamed is not None else n
    positions, seeds = shuffled_with_seeds(tf.data.Dataset.range(n), buffer, seed, epoch)
    both = tf.data.Dataset.zip(positions, seeds)
    if num_shards > 1:
        both = both.shard(num_shards, shard_index)
    order, per_example = [np.zeros(0, np.int64)], [np.zeros((0, 2), np.int64)]
    for p, s in both.batch(65536).as_numpy_iterator():
        order.append(p)
        per_example.append(s)
    order_array = np.concatenate(order)
    return IndexedEpoch(split, batch_size, augment, order_array, np.concatenate(per_example),
                        batch_count(len(order_array), batch_size, drop_remainder),
                        drop_remainder)


def pipeline(split: Split, batch_size: int, training: bool, seed: int = 0, augment: bool = True,
             drop_remainder: bool = False, epoch: int | None = None, num_shards: int = 1,
             shard_index: int = 0) -> tf.data.Dataset:
    """A batched `tf.data.Dataset` of (float32 images in [0, 255], int32 labels).

    Training: shuffled (seeded) and augmented with per-example stateless seeds. With `epoch`
    the dataset is that one epoch, its order and augmentation a function of (seed, epoch), so a
    resumed epoch (or another worker) sees the same batches; without it, each iteration is the
    next epoch. Evaluation: in order, no augmentation. `drop_remainder` drops the last partial
    batch (needed under several replicas, where a remainder smaller than the number of replicas
    leaves a replica an empty batch that batch normalisation rejects). A streamed split gives
    the same batches as the same split held in memory (image folders; tensorflow-datasets'
    records shuffle in a bounded buffer instead). `num_shards` / `shard_index`: this worker's
    share of every epoch (see `examples`), batched by `batch_size` (a per-replica batch).
    """
    import tensorflow as tf

    ds = examples(split, training, seed, augment, epoch, num_shards, shard_index)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(
        lambda x, y: (tf.cast(x, tf.float32), y))
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class _ChannelSums:
    """Per-channel sums of pixel values and of their squares, exact for integer pixels (int64:
    no float copy of the data, whose float64 form is 8x the size of uint8 images)."""

    def __init__(self) -> None:
        self.total: np.ndarray | int = 0
        self.square: np.ndarray | int = 0
        self.count = 0

    def add(self, images: np.ndarray) -> None:
        kind = np.int64 if np.issubdtype(images.dtype, np.integer) else np.float64
        x = images.reshape(-1, images.shape[-1]).astype(kind)
        self.total = self.total + x.sum(0)
        self.square = self.square + (x * x).sum(0)
        self.count += len(x)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        mean = np.asarray(self.total, np.float64) / self.count
        return mean, np.asarray(self.square, np.float64) / self.count - mean * mean


def channel_statistics(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of uint8 images, in [0, 255] units (float64), summed
    `chunk` images at a time."""
    sums = _ChannelSums()
    for start in range(0, len(images), chunk):
        sums.add(images[start:start + chunk])
    return sums.moments()


def split_statistics(split: Split, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of a split's images: exact in memory; for a streamed
    split, over `STATISTICS_SAMPLE` of its images (a fixed sample by seed), as evaluated."""
    if split.images is not None:
        return channel_statistics(split.images)
    n = len(split)
    index = np.sort(np.random.default_rng(seed).permutation(n)[:STATISTICS_SAMPLE])
    sums = _ChannelSums()
    for images, _ in examples(split.take(index), training=False).batch(256).as_numpy_iterator():
        sums.add(images)
    return sums.moments()
