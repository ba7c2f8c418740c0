"""Post-hoc logit adjustment: predict `argmax_c (z_c - tau * log pi_c)` (Menon et al., 2021).

A classifier trained on imbalanced data with plain cross-entropy estimates `P(y | x)`, which
carries the training prior `pi_y = n_y / sum_k n_k`: its argmax favours the frequent classes.
Dividing the prior out, `argmax_y P(y | x) / pi_y = argmax_y (z_y - log pi_y)`, gives the
prediction that minimises the balanced error (the mean of the per-class errors) when the
softmax is a good estimate; `tau` scales the correction, as a temperature, to make up for a
softmax that is not (tau = 0: no adjustment; tau = 1: the Bayes rule above).

* `adjust_logits(logits, counts, tau)`: `z - tau * log(pi)` in `keras.ops` (every backend,
  eagerly or inside a `tf.function`, as `tfimb export --logit-adjustment` uses it).
* `choose_tau(logits, labels, counts)`: the tau of a grid with the best balanced accuracy on
  the split it is given, which must be a validation split, never the test split.
* `priors(counts)`: `pi`, from the training counts.

Example:

    logits = model.predict(validation_images)
    tau, by_tau = tfimb.posthoc.choose_tau(logits, validation_labels, counts)
    predictions = keras.ops.argmax(tfimb.posthoc.adjust_logits(test_logits, counts, tau), -1)

Reference: Menon, Jayasumana, Rawat, Jain, Veit, Kumar. "Long-tail learning via logit
adjustment." ICLR 2021. https://arxiv.org/abs/2007.07314 (the post-hoc correction).
The authors' TensorFlow code (google-research `logit_adjustment/main.py`, `--mode=posthoc`)
trains with cross-entropy and evaluates `logits - log(base_probs ** tau + 1e-12)` with a
fixed `--tau` (default 1.0); it sweeps no grid. The grid searched here on a validation split
is tfimb's choice, so that a run reports a tau it did not pick on its own test split.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from keras import backend, ops

from tfimb import _checks
from tfimb._checks import ArrayLike, TensorLike

#: Menon et al.'s default temperature: the Bayes rule for the balanced error.
DEFAULT_TAU = 1.0
#: The grid `choose_tau` searches by default: 0.0, 0.25, ..., 3.0 (0 is no adjustment).
DEFAULT_TAUS: tuple[float, ...] = tuple(0.25 * i for i in range(13))
# Balanced accuracies closer than this are a tie (they are ratios of example counts, so a
# real difference on a split of under a million examples per class is larger).
_TIE = 1e-9


def check_tau(tau: float, arg: str = "tau") -> float:
    """A finite `tau >= 0` as a float, else the one-line Keras-form ValueError naming `arg`."""
    return _checks.check_range(arg, tau, 0.0)


def priors(counts: ArrayLike) -> np.ndarray:
    """Class priors `pi_c = n_c / sum_k n_k` (float64) from the training counts.

    Counts are checked as the losses check them (`tfimb.weights`): a 1-D sequence of at least
    two positive whole numbers, one per class, over the whole training set. A zero count
    fails with one line in Keras' form naming `counts`, since `log(0)` would send the class's
    adjusted logit to `+inf`.
    """
    if not isinstance(counts, (list, tuple)):
        try:  # A list in the message: an array's own repr breaks lines.
            counts = np.asarray(counts).tolist()
        except (TypeError, ValueError):
            pass
    n = _checks.check_counts(counts)
    return n / n.sum()


def adjust_logits(logits: TensorLike, counts: ArrayLike, tau: float = DEFAULT_TAU
                  ) -> TensorLike:
    """Post-hoc adjusted logits `z - tau * log(pi)`, `pi = counts / sum(counts)`.

    The argmax of the result is Menon et al.'s post-hoc prediction: a class's logit rises by
    `tau * log(1 / pi_c)`, most for the rarest classes. A softmax over the result estimates
    the class probabilities under a uniform prior. Written in `keras.ops`, so it runs on every
    backend, eagerly and inside a `tf.function` (the logits may be symbolic; `counts` and
    `tau` are concrete and become constants).

    Args:
        logits: scores of shape `(..., C)`: a backend tensor, NumPy array or nested list.
            Float logits keep their dtype (float16/bfloat16 under mixed precision); others
            are cast to float32.
        counts: training examples per class, `C` positive whole numbers (`priors`).
        tau: temperature of the adjustment, finite and `>= 0` (0 returns the logits).

    Returns:
        A backend tensor of the logits' shape.

    Reference: Menon et al., "Long-tail learning via logit adjustment", ICLR 2021.
    """
    pi = priors(counts)
    tau = check_tau(tau)
    logits = ops.convert_to_tensor(logits)
    dtype = backend.standardize_dtype(logits.dtype)
    if not backend.is_float_dtype(dtype):
        logits, dtype = ops.cast(logits, "float32"), "float32"
    shift = ops.convert_to_tensor(tau * np.log(pi), dtype=dtype)
    return logits - shift


def _checked(logits: ArrayLike, labels: ArrayLike, num_classes: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(float64 logits (N, C), int64 labels (N,)) after one-line checks of both."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] != num_classes:
        raise _checks.invalid_value("logits", f"scores of shape (N, {num_classes}) with N >= 1 "
                                    "(one column per count)", f"array of shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise _checks.invalid_value("logits", "finite scores",
                                    f"array with {int(np.sum(~np.isfinite(z)))} non-finite values")
    y = np.asarray(labels).reshape(-1)
    if (y.shape[0] != z.shape[0] or not np.issubdtype(y.dtype, np.number)
            or not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= num_classes):
        raise _checks.invalid_value("labels", f"{z.shape[0]} class ids in [0, {num_classes}), "
                                    "one per row of logits", f"array of shape {y.shape}")
    return z, y.astype(np.int64)


def balanced_accuracy(labels: ArrayLike, predictions: ArrayLike, num_classes: int) -> float:
    """Mean per-class accuracy (recall) over the classes that have an example (NumPy): class
    ids in [0, num_classes), as `choose_tau` checks them."""
    y, p = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    support = np.bincount(y, minlength=num_classes).astype(np.float64)
    hits = np.bincount(y[p == y], minlength=num_classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def choose_tau(logits: ArrayLike, labels: ArrayLike, counts: ArrayLike,
               taus: Sequence[float] | None = None) -> tuple[float, dict[float, float]]:
    """The tau with the best balanced accuracy of `argmax(z - tau * log pi)` on the split given.

    Balanced (mean per-class) accuracy is the quantity the adjustment targets: on a validation
    split carved with the same number of images per class (`data.validation_per_class`) it is
    also the plain accuracy; on any other split it weighs every class alike, as the balanced
    test split of the imbalance protocol does. Classes with no example in the split are left
    out of the mean.

    Rule: the highest balanced accuracy wins; a tie (equal within 1e-9) goes to the tau closest
    to 1, Menon et al.'s default and the Bayes rule for a calibrated softmax, and a tie in that
    distance to the smaller tau (the milder adjustment). So a split too small to tell taus
    apart gives tau = 1 when 1 is in the grid.

    It reads nothing but its arguments: give it a validation split's logits and labels, never
    the test split's (a tau chosen on the test split overstates the test accuracy).

    Args:
        logits: `(N, C)` scores of the split (NumPy-like; what `adjust_logits` takes).
        labels: `(N,)` class ids of the split.
        counts: the training counts per class (`priors`), not the split's.
        taus: the candidates, each finite and `>= 0` (default `DEFAULT_TAUS`: 0, 0.25, ...,
            3).

    Returns:
        `(tau, {tau: balanced accuracy})`, the candidates in increasing order.

    Reference: Menon et al., "Long-tail learning via logit adjustment", ICLR 2021.
    """
    pi = priors(counts)
    if taus is None:
        taus = DEFAULT_TAUS
    try:
        candidates = sorted({check_tau(t) for t in taus})
    except (TypeError, ValueError):
        raise _checks.invalid_value("taus", "a non-empty sequence of finite taus >= 0",
                                    taus) from None
    if not candidates:
        raise _checks.invalid_value("taus", "a non-empty sequence of finite taus >= 0", taus)
    z, y = _checked(logits, labels, len(pi))
    log_pi = np.log(pi)
    by_tau = {tau: balanced_accuracy(y, np.argmax(z - tau * log_pi, axis=-1), len(pi))
              for tau in candidates}
    best = max(by_tau.values())
    tied = [tau for tau in candidates if by_tau[tau] >= best - _TIE]
    chosen = min(tied, key=lambda tau: (abs(tau - DEFAULT_TAU), tau))
    return chosen, by_tau

