"""The margin loss: LDAM (label-distribution-aware margins), with optional deferred re-weighting.

A softmax cross-entropy on scaled cosine logits with a per-class margin subtracted from the true
class's logit, `tfimb.losses._core` doing the computation; the rules all losses share are in the
`tfimb.losses` docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import keras

from tfimb import _checks
from tfimb import weights as _weights
from tfimb._checks import ArrayLike, Normalization
from tfimb.losses._base import _counts_config, _ImbalanceLoss


def _ldam_margins(counts: np.ndarray, max_margin: float) -> np.ndarray:
    """`D_c = max_margin * n_c^(-1/4) / max_k n_k^(-1/4)`: the rarest class gets max_margin."""
    quarter = np.power(counts, -0.25)
    return max_margin * quarter / quarter.max()


def _check_margin_and_scale(max_margin: float, scale: float) -> tuple[float, float]:
    return (_checks.check_range("max_margin", max_margin, 0.0),
            _checks.check_range("scale", scale, 0.0, low_inclusive=False))


@keras.saving.register_keras_serializable(package="tfimb")
class LDAM(_ImbalanceLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019).

    Per example: `l = CE(s * (z - D * onehot(y)))` with per-class margins
    `D_c = max_margin * n_c^(-1/4) / max_k n_k^(-1/4)` (the rarest class gets `max_margin`).
    `z` is meant to be a cosine similarity in [-1, 1]: use `tfimb.models.CosineClassifier` as
    the last layer and leave `from_logits=True`. The authors pair it with deferred re-weighting
    (DRW: class-balanced weights with beta = 0.9999 from 80% of training on); `beta` turns the
    class-balanced weights on (`None`: unweighted), `set_beta` switches them during training
    (`tfimb train` does so with `loss.drw_epoch`).

    Args:
        counts: training examples per class over the whole training set (1-D, all > 0).
        max_margin: the largest margin, `max_margin >= 0` (default 0.5).
        scale: `s > 0`, multiplies the cosine logits (default 30.0).
        beta: `None` (default, unweighted) or `0 <= beta < 1` for class-balanced weights
            `w_c = (1 - beta) / (1 - beta^{n_c})` as in `ClassBalancedSoftmax`.
        normalization: batch reduction of the weighted loss, `"weighted_mean"` (default, as the
            authors' `F.cross_entropy(weight=w)`) or `"num_classes"`.
        from_logits, label_smoothing, reduction, name, dtype: as in `SoftmaxCrossEntropy`.

    Reference: Cao, Wei, Gaidon, Arechiga, Ma. "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss." https://arxiv.org/abs/1906.07413

    Example:

    >>> counts = [5000, 500, 50]
    >>> inputs = keras.Input((64,))
    >>> model = keras.Model(inputs, tfimb.models.CosineClassifier(3)(inputs))
    >>> model.compile(optimizer="sgd", loss=tfimb.LDAM(counts, max_margin=0.5, scale=30.0))
    >>> cosines = [[0.9, 0.1, 0.0], [0.1, 0.8, 0.2], [0.0, 0.2, 0.7]]
    >>> round(float(tfimb.LDAM(counts)([0, 1, 2], cosines)), 6)
    0.231486
    """

    def __init__(self, counts: ArrayLike, max_margin: float = 0.5, scale: float = 30.0,
                 beta: float | None = None, normalization: Normalization = "weighted_mean",
                 from_logits: bool = True, label_smoothing: float = 0.0,
                 reduction: str | None = "sum_over_batch_size", name: str = "ldam",
                 dtype: str | None = None) -> None:
        super().__init__(from_logits=from_logits, label_smoothing=label_smoothing,
                         reduction=reduction, name=name, dtype=dtype)
        counts = _checks.check_counts(counts)
        self.counts = _counts_config(counts)
        self.max_margin, self.scale = _check_margin_and_scale(max_margin, scale)
        self.margins = _ldam_margins(counts, self.max_margin)
        self.normalization = _checks.check_normalization(normalization)
        self.set_beta(beta)

    def set_beta(self, beta: float | None) -> None:
        """Switch class-balanced re-weighting on (`beta`) or off (`None`).

        Deferred re-weighting (DRW) calls this part-way through training; a compiled train
        function must then be re-traced (`model.make_train_function(force=True)`), since the
        weights are constants of the traced graph.
        """
        self.class_weights: np.ndarray | None = None
        if beta is not None:
            self.class_weights = _weights.class_balanced_weights(self.counts, beta)
            beta = float(beta)
        self.beta = beta

    def _loss_kwargs(self) -> dict[str, Any]:
        kwargs = dict(margins=self.margins.astype(self.dtype), scale=self.scale,
                      num_classes=len(self.counts))
        if self.class_weights is not None:
            kwargs.update(class_weights=self.class_weights.astype(self.dtype),
                          normalization=self.normalization)
        return kwargs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "counts": self.counts, "max_margin": self.max_margin,
                "scale": self.scale, "beta": self.beta, "normalization": self.normalization}
