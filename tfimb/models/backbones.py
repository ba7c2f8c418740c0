"""Backbones for larger images: ResNet-50, and any `keras.applications` model by name.

`resnet50` is He et al.'s ImageNet ResNet-50 (`keras.applications.ResNet50`, 23.5M parameters
without its top), the model of the ImageNet-LT protocol (Kang et al., ICLR 2020; Cao et al.,
NeurIPS 2019). `application("EfficientNetB0", ...)` builds any other `keras.applications`
class the same way (config name `keras.applications.EfficientNetB0`). Each is built without
its ImageNet top and without pretrained weights unless `weights` names a weights file (such as
Keras' `*_notop.h5`), followed by tfimb's head: global average pooling and dense logits, or the
cosine classifier for `tfimb.LDAM`; logits are float32 under mixed precision.
"""

from __future__ import annotations

from typing import Sequence

import keras

from tfimb import _checks, catalog
from tfimb.models.resnet import Head, check_common, head_logits

#: Config names of the form `keras.applications.<Class>` build that class.
APPLICATIONS = catalog.APPLICATIONS


def application(class_name: str, num_classes: int = 1000,
                input_shape: Sequence[int] = (224, 224, 3), head: Head = "dense",
                weights: str | None = None, name: str | None = None) -> keras.Model:
    """`keras.applications.<class_name>` without its top, then tfimb's head.

    Args:
        class_name: a `keras.applications` model class, e.g. `"ResNet50"`.
        num_classes: classes in the logits.
        input_shape: `(height, width, channels)`.
        head: `"dense"` (logits) or `"cosine"` (`CosineClassifier`, for `tfimb.LDAM`).
        weights: a weights file for the backbone without its top, or None (random init).
        name: the model's name (default: the class name in lower case).
    """
    builder = getattr(keras.applications, class_name, None)
    if not isinstance(class_name, str) or class_name.startswith("_") or not callable(builder):
        raise _checks.invalid_value("name", "a keras.applications model such as "
                                    "'keras.applications.ResNet50'", APPLICATIONS + str(class_name))
    check_common(num_classes, input_shape)
    inputs = keras.Input(tuple(input_shape), name="image")
    backbone = builder(include_top=False, weights=weights, input_shape=tuple(input_shape))
    return keras.Model(inputs, head_logits(backbone(inputs), num_classes, head),
                       name=name or class_name.lower())


def resnet50(num_classes: int = 1000, input_shape: Sequence[int] = (224, 224, 3),
             head: Head = "dense", weights: str | None = None) -> keras.Model:
    """ResNet-50 (ImageNet stem and bottleneck blocks) with tfimb's head. Args as
    `application`."""
    return application("ResNet50", num_classes, input_shape, head, weights, name="resnet50")
