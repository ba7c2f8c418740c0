"""Class-aware sampling: which training examples an epoch draws, class j with probability p_j.

Kang et al. (ICLR 2020, "Decoupling representation and classifier for long-tailed recognition")
write every sampler as p_j = n_j^q / sum_k n_k^q over the training counts n_j:

* `instance` (q = 1): every example once per epoch, the default (no re-sampling at all);
* `class_balanced` (q = 0): every class equally often;
* `square_root` (q = 1/2);
* `progressive`: p(t) = (1 - t/T) p_instance + (t/T) p_class_balanced at epoch t (0-based) of
  T, from instance-balanced at the first epoch towards class-balanced at the last.

An epoch keeps its length n (the training-set size). Class j gets m_j = n p_j of its draws,
rounded by largest remainder so that the m_j sum to n; its m_j examples cycle through a random
permutation of the class (each example drawn floor(m_j / n_j) or one more times, never twice
before every other one of its class is drawn once: the least variance a sampler can have, as
facebookresearch/classifier-balancing's ClassAwareSampler cycles each class's list). The draw
is a function of (seed, epoch) alone, so a resumed epoch, another worker or the tf.data
service's workers draw the same examples; the pipeline then shuffles them as it shuffles any
epoch (`tfimb.data.pipeline`).

For your own `tf.data` pipeline and `model.fit`, `epoch_indices` gives one epoch's positions
into your arrays and `sampled_dataset` a finished dataset of (x, y) batches, epoch after epoch:

    >>> ds = tfimb.data.sampled_dataset(x_train, y_train, "square_root", batch_size=128,
    ...                                 epochs=200)                      # doctest: +SKIP
    >>> model.fit(ds, epochs=200, steps_per_epoch=-(-len(y_train) // 128))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tfimb import _checks
from tfimb._checks import ArrayLike
from tfimb.config.common import SAMPLINGS

if TYPE_CHECKING:
    import tensorflow as tf

    from tfimb.data.splits import Split

_EXPONENTS = {"instance": 1.0, "class_balanced": 0.0, "square_root": 0.5}


def check_sampling(sampling: object, argument: str = "sampling") -> str:
    """`sampling` when it names a sampler, else a one-line ValueError naming `argument`."""
    if not isinstance(sampling, str) or sampling not in SAMPLINGS:
        raise _checks.invalid_value(argument, f"one of {list(SAMPLINGS)}", sampling)
    return sampling


def class_probabilities(counts: ArrayLike, sampling: str, epoch: int = 0,
                        epochs: int = 1) -> np.ndarray:
    """p_j, the probability that a draw of epoch `epoch` (0-based, of `epochs`) is of class j,
    for training counts n_j (float64, sums to 1; classes without an example get 0).

    >>> class_probabilities([400, 100], "square_root").tolist()
    [0.6666666666666666, 0.3333333333333333]
    >>> class_probabilities([400, 100], "progressive", epoch=1, epochs=2).tolist()
    [0.65, 0.35]
    """
    check_sampling(sampling)
    n = np.asarray(counts, np.float64)
    if n.ndim != 1 or n.size == 0 or np.any(n < 0) or not np.any(n > 0):
        raise ValueError("Invalid value for argument `counts`. Expected a 1-D array of "
                         f"training counts, >= 0, not all 0. Received: counts={n.tolist()}")
    present = n > 0

    def power(q: float) -> np.ndarray:
        weights = np.zeros_like(n)
        weights[present] = n[present] ** q  # An empty class is never drawn, even at q = 0.
        return weights / weights.sum()

    if sampling != "progressive":
        return power(_EXPONENTS[sampling])
    epochs = _checks.check_int("epochs", epochs, 1)
    if _checks.check_int("epoch", epoch, 0) >= epochs:
        raise _checks.invalid_value("epoch", f"0 <= epoch < epochs={epochs}", epoch)
    t = epoch / epochs
    return (1.0 - t) * power(1.0) + t * power(0.0)


def draws_per_class(probabilities: np.ndarray, n: int) -> np.ndarray:
    """m_j: n draws shared out as n p_j, rounded by largest remainder (ties to the lower class
    index) so that they sum to n exactly (int64)."""
    exact = np.asarray(probabilities, np.float64) * n
    m = np.floor(exact + 1e-9).astype(np.int64)
    short = n - int(m.sum())
    if short > 0:
        order = np.lexsort((np.arange(len(exact)), -(exact - m)))
        m[order[:short]] += 1
    return m


def _rng(seed: int, epoch: int) -> np.random.Generator:
    # Its own stream: a sampled epoch's draw must not repeat the pipeline's shuffle of it.
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x5A4D]))


def epoch_indices(labels: ArrayLike, sampling: str = "instance", seed: int = 0, epoch: int = 0,
                  epochs: int = 1, num_classes: int | None = None) -> np.ndarray:
    """Positions into `labels` drawn for epoch `epoch` (0-based, of `epochs`), sorted, len(labels)
    of them (int64). `instance` gives every position once (0..n-1); the other samplers draw
    class j `m_j` times (`draws_per_class`), cycling through a permutation of its examples
    that is a function of (seed, epoch). Shuffle them (`tf.data.Dataset.shuffle`) to train."""
    check_sampling(sampling)
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (
            labels.size and labels.min() < 0):
        raise ValueError("Invalid value for argument `labels`. Expected a 1-D array of integer "
                         f"class indices >= 0. Received: labels of dtype {labels.dtype} and "
                         f"shape {labels.shape}")
    n = len(labels)
    if sampling == "instance" or n == 0:
        return np.arange(n, dtype=np.int64)
    num_classes = int(num_classes or labels.max() + 1)
    counts = np.bincount(labels, minlength=num_classes)
    m = draws_per_class(class_probabilities(counts, sampling, epoch, epochs), n)
    rng = _rng(seed, epoch)
    drawn = []
    for c in range(num_classes):
        if m[c]:
            members = rng.permutation(np.flatnonzero(labels == c))
            drawn.append(np.resize(members, m[c]))  # Cycles: each member once per lap.
    return np.sort(np.concatenate(drawn)).astype(np.int64)


def resample(split: Split, sampling: str, seed: int, epoch: int, epochs: int,
             num_classes: int | None = None) -> Split:
    """The split an epoch trains on: `split` itself under `instance`, else its examples at
    `epoch_indices(...)` (images repeated in memory; paths or record positions when streamed)."""
    if sampling == "instance":
        return split
    return split.take(epoch_indices(split.labels, sampling, seed, epoch, epochs, num_classes))


def sampled_dataset(x: ArrayLike, y: ArrayLike, sampling: str, batch_size: int,
                    epochs: int, seed: int = 0, shuffle: bool = True) -> tf.data.Dataset:
    """(x, y) batches for `model.fit(ds, epochs=epochs, steps_per_epoch=ceil(len(y) /
    batch_size))`: epoch e draws `epoch_indices(y, sampling, seed, e, epochs)`, shuffled
    (seeded by (seed, e)), in batches of `batch_size` (the last one of each epoch partial).
    `x` and `y` are in-memory arrays (y integer class indices); add augmentation with `.map`."""
    import tensorflow as tf

    _checks.check_int("batch_size", batch_size, 1)
    _checks.check_int("epochs", epochs, 1)
    labels = np.asarray(y)
    if len(x) != len(labels):
        raise ValueError(f"Invalid value for arguments `x` and `y`. Expected as many examples "
                         f"in x as labels in y. Received: {len(x)} and {len(labels)}")
    features, targets = tf.constant(np.asarray(x)), tf.constant(labels)

    def epoch_positions(e: int) -> np.ndarray:
        index = epoch_indices(labels, sampling, seed, e, epochs)
        return _rng(seed, e + epochs).permutation(index) if shuffle else index

    # Every epoch's positions, drawn now: n int64 per epoch (8 MB for 200 epochs of 5,000).
    positions = np.stack([epoch_positions(e) for e in range(epochs)])
    return (tf.data.Dataset.from_tensor_slices(positions)
            .flat_map(lambda p: tf.data.Dataset.from_tensor_slices(p).batch(batch_size))
            .map(lambda p: (tf.gather(features, p), tf.gather(targets, p)),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))
