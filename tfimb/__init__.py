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

import importlib

from tfimb import platform_info

# TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at its import: ask for the oneDNN CPU kernels
# (about 2x faster on CPUs where TensorFlow leaves them off) before anything imports it.
platform_info.enable_onednn()

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved lazily by `__getattr__`.
_LAZY_NAMES = {
    # Losses (pure Keras 3).
    "SoftmaxCrossEntropy": "tfimb.losses",
    "InverseClassFrequency": "tfimb.losses",
    "Focal": "tfimb.losses",
    "ClassBalancedSoftmax": "tfimb.losses",
    "ClassBalancedFocal": "tfimb.losses",
    "BalancedSoftmax": "tfimb.losses",
    "LogitAdjusted": "tfimb.losses",
    "LDAM": "tfimb.losses",
    "SigmoidCrossEntropy": "tfimb.losses",
    "SigmoidFocal": "tfimb.losses",
    "ClassBalancedSigmoid": "tfimb.losses",
    "ClassBalancedSigmoidFocal": "tfimb.losses",
    # Loss functions (per-example values).
    "softmax_cross_entropy": "tfimb.losses",
    "inverse_class_frequency": "tfimb.losses",
    "focal": "tfimb.losses",
    "class_balanced_softmax": "tfimb.losses",
    "class_balanced_focal": "tfimb.losses",
    "balanced_softmax": "tfimb.losses",
    "logit_adjusted": "tfimb.losses",
    "ldam": "tfimb.losses",
    "sigmoid_cross_entropy": "tfimb.losses",
    "sigmoid_focal": "tfimb.losses",
    "class_balanced_sigmoid": "tfimb.losses",
    "class_balanced_sigmoid_focal": "tfimb.losses",
    # Class-count and weight helpers (NumPy only).
    "effective_number": "tfimb.weights",
    "class_balanced_weights": "tfimb.weights",
    "class_counts": "tfimb.weights",
}
_SUBMODULES = ("losses", "metrics", "models", "weights", "flows", "cli", "platform_info")

__all__ = sorted(_LAZY_NAMES) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value  # Resolve once.
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tfimb' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
