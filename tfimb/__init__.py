"""tfimb: class-imbalance losses, group metrics and RealNVP density models for Keras 3 / TensorFlow.

`import tfimb` is cheap: it imports neither Keras nor TensorFlow. The public names below are
resolved on first use, so `tfimb.ClassBalancedFocal` imports Keras (and with it the configured
backend) only when it is touched, and the NumPy helpers (`tfimb.effective_number`, ...) import
nothing heavy at all. It does set `TF_ENABLE_ONEDNN_OPTS=1` (TensorFlow's fast oneDNN CPU
kernels) unless the variable is already set: see `tfimb.platform_info`.

    import tfimb
    model.compile(
        optimizer="sgd",
        loss=tfimb.ClassBalancedFocal(0.999, counts, gamma=1.0),
        metrics=tfimb.metrics.group_accuracies(minority=[1, 4, 6], num_classes=10),
    )
"""

from __future__ import annotations

import importlib

from tfimb import catalog, platform_info

# For type checkers only (`import tfimb` stays cheap: neither `typing` nor Keras is imported
# here at run time): the lazily resolved names below, spelled out so that `tfimb.Focal` has the
# class's own type. tests/test_typing.py checks that this list matches `_LAZY_NAMES`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any as _Any

    from tfimb import cli, flows, losses, metrics, models, weights
    from tfimb.losses import (
        LDAM,
        BalancedSoftmax,
        ClassBalancedFocal,
        ClassBalancedSigmoid,
        ClassBalancedSigmoidFocal,
        ClassBalancedSoftmax,
        Focal,
        InverseClassFrequency,
        LogitAdjusted,
        SigmoidCrossEntropy,
        SigmoidFocal,
        SoftmaxCrossEntropy,
        balanced_softmax,
        class_balanced_focal,
        class_balanced_sigmoid,
        class_balanced_sigmoid_focal,
        class_balanced_softmax,
        focal,
        inverse_class_frequency,
        ldam,
        logit_adjusted,
        sigmoid_cross_entropy,
        sigmoid_focal,
        softmax_cross_entropy,
    )
    from tfimb.weights import class_balanced_weights, class_counts, effective_number
del TYPE_CHECKING

# TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at its import: ask for the oneDNN CPU kernels
# (about 2x faster on CPUs where TensorFlow leaves them off) before anything imports it.
platform_info.enable_onednn()

__version__ = "0.1.0"

# Public name -> module that defines it, resolved lazily by `__getattr__`: every loss class and
# function from the loss registry (`tfimb.catalog`), and the NumPy helpers.
_LAZY_NAMES = {
    **{entry.class_name: "tfimb.losses" for entry in catalog.LOSSES},
    **{entry.name: "tfimb.losses" for entry in catalog.LOSSES},
    "effective_number": "tfimb.weights",
    "class_balanced_weights": "tfimb.weights",
    "class_counts": "tfimb.weights",
}
_SUBMODULES = ("losses", "metrics", "models", "weights", "flows", "cli", "platform_info",
               "catalog")

__all__ = sorted(_LAZY_NAMES) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str) -> _Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value  # Resolve once.
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tfimb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
