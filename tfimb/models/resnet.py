"""ResNets for 32x32 images, built with the Keras functional API.

* `resnet18_cifar`: He et al.'s ResNet-18 with the CIFAR stem used by the imbalanced CIFAR-10
  protocol: 3x3 stride-1 convolution, no max-pool, stages of 64/128/256/512 channels with two
  basic blocks each, global average pool, dense classifier (11.2M parameters).
* `resnet8` / `resnet20` / `resnet32`: the 6n+2-layer CIFAR ResNets of He et al. (2016)
  (n = 1, 3, 5), stages of 16/32/64 channels (0.08M / 0.27M / 0.46M parameters). `resnet8` is
  for smoke tests and quick experiments on tiny data, not for reproducing published numbers.

Two choices where the shape changes (the first block of a stage, stride 2):

* `shortcut`: `"projection"` (default; He et al.'s option B, a 1x1 stride-2 convolution and
  batch norm) or `"identity"` (option A, He et al.'s own choice for CIFAR and that of the
  CIFAR-10-LT reference code: every other pixel, the new channels zero; no parameters).
* `padding`: `"same"` (default; TensorFlow's SAME, which pads a 3x3 stride-2 convolution at the
  bottom and right only, so its outputs are centred on the odd input pixels 2i + 1 while a
  stride-2 shortcut takes pixel 2i) or `"symmetric"` (one pixel on every side, as PyTorch's
  `padding=1`: both branches centred on pixel 2i).

The classifier head outputs logits in float32 even under a mixed precision policy.
"""

from __future__ import annotations

from typing import Literal, Sequence

import keras

from tfimb import _checks
from tfimb import catalog
from tfimb._checks import TensorLike
from tfimb.models.heads import CosineClassifier

# The values (declared in `tfimb.catalog`, where a config reads them without Keras).
HEADS, SHORTCUTS, PADDINGS = catalog.HEADS, catalog.SHORTCUTS, catalog.PADDINGS
#: The classifier head: `"dense"` (logits) or `"cosine"` (`CosineClassifier`, for `tfimb.LDAM`).
Head = Literal["dense", "cosine"]
#: Where the shape changes: He et al.'s option B (`"projection"`) or A (`"identity"`).
Shortcut = Literal["projection", "identity"]
#: Padding of the stride-2 3x3 convolutions: TensorFlow's SAME or PyTorch's symmetric.
Padding = Literal["same", "symmetric"]


def _conv_bn(x: TensorLike, filters: int, kernel: int, strides: int, name: str,
             weight_decay: float, relu: bool = True, padding: Padding = "same") -> TensorLike:
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    conv_padding = "same"
    if padding == "symmetric" and strides > 1 and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        conv_padding = "valid"
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=conv_padding,
                            use_bias=False, kernel_initializer="he_normal",
                            kernel_regularizer=regularizer, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _identity_shortcut(x: TensorLike, filters: int, strides: int, name: str) -> TensorLike:
    """Option A from built-in layers only (so that `model.keras` loads without tfimb): pixels
    (strides i, strides j), then the channels zero-padded equally on both sides."""
    if strides > 1:
        x = keras.layers.MaxPooling2D(1, strides, name=f"{name}_subsample")(x)
    extra = filters - x.shape[-1]
    if extra:
        height, width, channels = x.shape[1:]
        x = keras.layers.Reshape((height, width, channels, 1), name=f"{name}_split")(x)
        x = keras.layers.ZeroPadding3D(((0, 0), (0, 0), (extra // 2, extra - extra // 2)),
                                       name=f"{name}_zeros")(x)
        x = keras.layers.Reshape((height, width, filters), name=f"{name}_merge")(x)
    return x


def _basic_block(x: TensorLike, filters: int, strides: int, name: str, weight_decay: float,
                 shortcut: Shortcut, padding: Padding) -> TensorLike:
    skip = x
    if strides != 1 or x.shape[-1] != filters:
        skip = (_identity_shortcut(x, filters, strides, f"{name}_skip")
                if shortcut == "identity" else
                _conv_bn(x, filters, 1, strides, f"{name}_proj", weight_decay, relu=False))
    y = _conv_bn(x, filters, 3, strides, f"{name}_1", weight_decay, padding=padding)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2", weight_decay, relu=False)
    y = keras.layers.Add(name=f"{name}_add")([skip, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def head_logits(x: TensorLike, num_classes: int, head: str) -> TensorLike:
    """Global average pooling, then dense logits or the cosine classifier (float32)."""
    if head not in HEADS:
        raise _checks.invalid_value("head", f"one of {HEADS}", head)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if head == "cosine":
        return CosineClassifier(num_classes, dtype="float32", name="logits")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def check_common(num_classes: int, input_shape: Sequence[int]) -> None:
    _checks.check_int("num_classes", num_classes, 2)
    if len(tuple(input_shape)) != 3:
        raise _checks.invalid_value("input_shape", "(height, width, channels)", input_shape)


def _build(name: str, stages: Sequence[int], blocks: int, num_classes: int,
           input_shape: Sequence[int], head: Head, weight_decay: float, shortcut: Shortcut,
           padding: Padding) -> keras.Model:
    check_common(num_classes, input_shape)
    if shortcut not in SHORTCUTS:
        raise _checks.invalid_value("shortcut", f"one of {SHORTCUTS}", shortcut)
    if padding not in PADDINGS:
        raise _checks.invalid_value("padding", f"one of {PADDINGS}", padding)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = _conv_bn(inputs, stages[0], 3, 1, "stem", weight_decay)
    for stage, filters in enumerate(stages):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, f"stage{stage + 1}_block{block + 1}",
                             weight_decay, shortcut, padding)
    return keras.Model(inputs, head_logits(x, num_classes, head), name=name)


def resnet18_cifar(num_classes: int = 10, input_shape: Sequence[int] = (32, 32, 3),
                   head: Head = "dense", weight_decay: float = 0.0,
                   shortcut: Shortcut = "projection", padding: Padding = "same") -> keras.Model:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool), 64/128/256/512 channels.

    Args:
        num_classes: classes in the logits.
        input_shape: `(height, width, channels)`.
        head: `"dense"` (logits) or `"cosine"` (`CosineClassifier`, for `tfimb.LDAM`).
        weight_decay: L2 coefficient added to the convolution kernels' loss (0 = none).
        shortcut: `"projection"` or `"identity"` where the shape changes (module docstring).
        padding: `"same"` or `"symmetric"` for the stride-2 convolutions (module docstring).
    """
    return _build("resnet18_cifar", (64, 128, 256, 512), 2, num_classes, input_shape, head,
                  weight_decay, shortcut, padding)


def resnet8(num_classes: int = 10, input_shape: Sequence[int] = (32, 32, 3), head: Head = "dense",
            weight_decay: float = 0.0, shortcut: Shortcut = "projection",
            padding: Padding = "same") -> keras.Model:
    """ResNet-8 for CIFAR (3 stages of 1 basic block, 16/32/64 channels). Args as above."""
    return _build("resnet8", (16, 32, 64), 1, num_classes, input_shape, head, weight_decay,
                  shortcut, padding)


def resnet20(num_classes: int = 10, input_shape: Sequence[int] = (32, 32, 3), head: Head = "dense",
             weight_decay: float = 0.0, shortcut: Shortcut = "projection",
             padding: Padding = "same") -> keras.Model:
    """ResNet-20 for CIFAR (3 stages of 3 basic blocks, 16/32/64 channels). Args as above."""
    return _build("resnet20", (16, 32, 64), 3, num_classes, input_shape, head, weight_decay,
                  shortcut, padding)


def resnet32(num_classes: int = 10, input_shape: Sequence[int] = (32, 32, 3), head: Head = "dense",
             weight_decay: float = 0.0, shortcut: Shortcut = "projection",
             padding: Padding = "same") -> keras.Model:
    """ResNet-32 for CIFAR (3 stages of 5 basic blocks), the CIFAR-10-LT papers' model. With
    `shortcut="identity", padding="symmetric"` it is the reference code's (0.46M parameters).
    Args as above."""
    return _build("resnet32", (16, 32, 64), 5, num_classes, input_shape, head, weight_decay,
                  shortcut, padding)
