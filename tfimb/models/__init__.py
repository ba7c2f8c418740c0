"""Classifier builders and heads (pure Keras 3: run on every backend).

* `resnet18_cifar`: ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool).
* `resnet8`, `resnet20`, `resnet32`: He et al.'s small CIFAR ResNets (6n+2 layers), fast on CPUs
  (`resnet8` for smoke tests and tiny data).
* `resnet50`, and any `keras.applications` class by the name `keras.applications.<Class>`:
  backbones for larger images, without pretrained weights unless a weights file is given.
* `CosineClassifier`: a normalised linear head giving cosine logits, for `tfimb.LDAM`.
* `ClassScales`, `NearestClassMean`: the second-stage heads of Kang et al. (LWS, NCM;
  `tfimb.decouple`).

`get(name, num_classes=..., input_shape=..., head=..., weights=..., shortcut=..., padding=...)`
builds any of them by its config name (`model.name`).
"""

from __future__ import annotations

from typing import Any, Callable

import keras

from tfimb import _checks, catalog
from tfimb.models.backbones import APPLICATIONS, application, resnet50
from tfimb.models.heads import ClassScales, CosineClassifier, NearestClassMean
from tfimb.models.resnet import resnet8, resnet18_cifar, resnet20, resnet32

__all__ = ["APPLICATIONS", "CIFAR_RESNETS", "ClassScales", "CosineClassifier", "MODELS",
           "NearestClassMean", "application", "get", "is_model_name",
           "resnet8", "resnet18_cifar", "resnet20", "resnet32", "resnet50"]

#: The models built by name; `keras.applications.<Class>` names build that class too.
MODELS: dict[str, Callable[..., keras.Model]] = {
    "resnet18_cifar": resnet18_cifar, "resnet8": resnet8, "resnet20": resnet20,
    "resnet32": resnet32, "resnet50": resnet50}
#: The models that take pretrained `weights` (a file).
TAKES_WEIGHTS = catalog.TAKES_WEIGHTS
#: The CIFAR ResNets, which take `shortcut` and `padding` (`tfimb.models.resnet`).
CIFAR_RESNETS = catalog.CIFAR_RESNETS


def is_model_name(name: Any) -> bool:
    """Whether `get` builds `name`: one of `MODELS`, or `keras.applications.<Class>`."""
    if not isinstance(name, str):
        return False
    if name.startswith(APPLICATIONS):
        class_name = name[len(APPLICATIONS):]
        return not class_name.startswith("_") and callable(
            getattr(keras.applications, class_name, None))
    return name in MODELS


def get(name: str, weights: str | None = None, shortcut: str = "projection",
        padding: str = "same", **kwargs: Any) -> keras.Model:
    """Build a model by its config name (see `is_model_name`); `weights` (a weights file) only
    for `resnet50` and `keras.applications` models, `shortcut` and `padding` other than the
    defaults only for the CIFAR ResNets (`tfimb.models.resnet`)."""
    if not is_model_name(name):
        raise _checks.invalid_value(
            "name", f"one of {sorted(MODELS)} or keras.applications.<Class>", name)
    if name in CIFAR_RESNETS:
        kwargs.update(shortcut=shortcut, padding=padding)
    else:
        # Name the argument that differs, so a wrong `padding` is not reported as `shortcut`.
        for argument, value, default in (("shortcut", shortcut, "projection"),
                                         ("padding", padding, "same")):
            if value != default:
                raise _checks.invalid_value(
                    argument, f"{default!r} for {name!r} (only the CIFAR ResNets "
                    f"{list(CIFAR_RESNETS)} take other values)", value)
    if name.startswith(APPLICATIONS):
        return application(name[len(APPLICATIONS):], weights=weights, **kwargs)
    if name in TAKES_WEIGHTS:
        return MODELS[name](weights=weights, **kwargs)
    if weights is not None:
        raise _checks.invalid_value("weights", f"None for {name!r} (only resnet50 and "
                                    "keras.applications models load weights)", weights)
    return MODELS[name](**kwargs)
