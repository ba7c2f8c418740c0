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

    from tfimb import cli, flows, losses, metrics, models, posthoc, weights
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
               "catalog", "posthoc")

__all__ = sorted(_LAZY_NAMES) + list(_SUBMODULES) + ["__version__", "register_all"]


def __getattr__(name: str) -> _Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value  # Resolve once.
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tfimb' has no attribute {name!r}")


def register_all() -> dict[str, _Any]:
    """Register every tfimb Keras object with Keras and return them by registered name.

    `import tfimb` imports no Keras, so it registers nothing: call this before
    `keras.saving.load_model` on a `.keras` file that holds a tfimb loss, metric or layer (a
    model compiled with `tfimb.ClassBalancedFocal`, `model.keras` of an LDAM run with its
    cosine head), as TensorFlow Addons' `tfa.register_all()`. The file then loads in safe mode.
    The returned dict also serves as `custom_objects=`. Registers the losses, the metrics and
    the models' layers; with the TensorFlow backend also the fused batch norm and the RealNVP
    model and layers.
    """
    import keras

    modules = ["losses", "metrics", "models"]
    if keras.backend.backend() == "tensorflow":
        modules += ["fused_batch_norm", "flows"]
    for module in modules:
        importlib.import_module(f"{__name__}.{module}")
    return {name: value for name, value in keras.saving.get_custom_objects().items()
            if name.startswith("tfimb>")}


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
