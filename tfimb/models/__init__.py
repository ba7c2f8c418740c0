"""Classifier builders and heads (pure Keras 3: run on every backend).

* `resnet18_cifar`: ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool).
* `resnet8`, `resnet20`, `resnet32`: He et al.'s small CIFAR ResNets (6n+2 layers), fast on CPUs
  (`resnet8` for smoke tests and tiny data).
* `CosineClassifier`: a normalised linear head giving cosine logits, for `tfimb.LDAM`.
"""

from __future__ import annotations

from tfimb.models.heads import CosineClassifier
from tfimb.models.resnet import MODELS, get, resnet8, resnet18_cifar, resnet20, resnet32

__all__ = ["CosineClassifier", "MODELS", "get", "resnet8", "resnet18_cifar", "resnet20",
           "resnet32"]
