"""The loss registry: each loss's name, class, formula, arguments and title, declared once;
and the names a config may give its model (`MODEL_NAMES` and the rest, at the end).

Importable without Keras, so that a config is checked without loading TensorFlow.
`tfimb.losses.LOSSES` (name -> class), the public names of `tfimb`,
the config's loss names, `tfimb losses` and the report's row titles are all read from
`LOSSES`; `tests/test_losses.py` checks that it and the classes in `tfimb.losses` agree.
Notation: z = logits, p = softmax(z), y = true class, n_c = training examples of class c,
C = number of classes, w_c = class weight; for the sigmoid losses y_c is the 0/1 target of
class c (one-hot or multi-hot) and p_t,c = sigmoid(z_c) for a positive, 1 - sigmoid(z_c) for a
negative.
"""

from __future__ import annotations

import collections

LossEntry = collections.namedtuple(
    "LossEntry", ["name", "class_name", "formula", "arguments", "title", "activation",
                  "weighted", "required", "options"])
LossEntry.__doc__ = """One loss, declared once.

name: snake-case config name, also the name of its function in `tfimb.losses`;
class_name: its `keras.losses.Loss` class in `tfimb.losses` (both exported by `tfimb`);
formula: per-example loss (`tfimb losses`); arguments: its main arguments with defaults;
title: its label in report tables; activation: "softmax" or "sigmoid" (one-vs-all; the
classifier's last bias starts at -log(C - 1)); weighted: takes class-balanced style weights
and `normalization`; required: its constructor's required arguments (`counts` is filled in
from the data by `tfimb train`); options: its optional arguments besides the ones every loss
takes (`COMMON_OPTIONS`). A config's `loss:` section takes the required and optional
arguments other than `counts`."""

# Optional arguments of every loss (besides name, reduction and dtype).
COMMON_OPTIONS = ("from_logits", "label_smoothing")

LOSSES = (
    LossEntry("softmax_cross_entropy", "SoftmaxCrossEntropy",
              "-log p_y", "", "CE", "softmax", False, (),
              ()),
    LossEntry("inverse_class_frequency", "InverseClassFrequency",
              "-w_y log p_y,  w_c = 1/n_c", "counts", "inverse class frequency", "softmax",
              True, ('counts',),
              ('normalization',)),
    LossEntry("focal", "Focal",
              "-(1 - p_y)^gamma log p_y", "gamma=2.0", "focal", "softmax", False, (),
              ('gamma',)),
    LossEntry("class_balanced_softmax", "ClassBalancedSoftmax",
              "-w_y log p_y,  w_c = (1 - beta)/(1 - beta^n_c)", "beta, counts",
              "class-balanced softmax", "softmax", True, ('beta', 'counts'),
              ('normalization',)),
    LossEntry("class_balanced_focal", "ClassBalancedFocal",
              "-w_y (1 - p_y)^gamma log p_y,  w_c = (1 - beta)/(1 - beta^n_c)",
              "beta, counts, gamma=1.0", "class-balanced focal", "softmax", True,
              ('beta', 'counts'),
              ('gamma', 'normalization')),
    LossEntry("balanced_softmax", "BalancedSoftmax",
              "CE(z + log n)", "counts", "balanced softmax", "softmax", False, ('counts',),
              ()),
    LossEntry("logit_adjusted", "LogitAdjusted",
              "CE(z + tau log pi),  pi_c = n_c / sum_k n_k", "counts, tau=1.0",
              "logit adjusted", "softmax", False, ('counts',),
              ('tau',)),
    LossEntry("ldam", "LDAM",
              "CE(s (z - D_y onehot(y))),  D_c = m n_c^(-1/4) / max_k n_k^(-1/4)",
              "counts, max_margin=0.5, scale=30.0", "LDAM", "softmax", False, ('counts',),
              ('max_margin', 'scale', 'beta', 'normalization')),
    LossEntry("sigmoid_cross_entropy", "SigmoidCrossEntropy",
              "sum_c BCE(z_c, y_c),  BCE(z, y) = softplus(z) - y z", "", "sigmoid CE",
              "sigmoid", False, (),
              ()),
    LossEntry("sigmoid_focal", "SigmoidFocal",
              "sum_c (1 - p_t,c)^gamma BCE(z_c, y_c),  p_t = sigmoid(+-z)", "gamma=2.0",
              "sigmoid focal", "sigmoid", False, (),
              ('gamma',)),
    LossEntry("class_balanced_sigmoid", "ClassBalancedSigmoid",
              "w_y sum_c BCE(z_c, y_c),  w_c = (1 - beta)/(1 - beta^n_c)",
              "beta, counts, weighting='example'", "class-balanced sigmoid", "sigmoid", True,
              ('beta', 'counts'),
              ('normalization', 'weighting')),
    LossEntry("class_balanced_sigmoid_focal", "ClassBalancedSigmoidFocal",
              "w_y sum_c (1 - p_t,c)^gamma BCE(z_c, y_c),  w_c = (1 - beta)/(1 - beta^n_c)",
              "beta, counts, gamma=1.0, weighting='example'", "class-balanced sigmoid focal",
              "sigmoid", True, ('beta', 'counts'),
              ('gamma', 'normalization', 'weighting')),
)
BY_NAME: dict[str, LossEntry] = {entry.name: entry for entry in LOSSES}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def config_keys(name: str) -> tuple[str, ...]:
    """The keys a config's `loss:` section may give loss `name` (all its arguments but
    `counts`, which `tfimb train` fills in from the data)."""
    entry = BY_NAME[name]
    return tuple(k for k in entry.required + entry.options + COMMON_OPTIONS if k != "counts")


def takes(name: str, parameter: str, required: bool = False) -> bool:
    """Whether loss `name` takes `parameter` (as a required argument, if `required`)."""
    entry = BY_NAME[name]
    optional = entry.options + COMMON_OPTIONS
    return parameter in entry.required or (not required and parameter in optional)


WEIGHTED: tuple[str, ...] = tuple(e.name for e in LOSSES if e.weighted)
# Losses of one-vs-all sigmoids: the classifier's last bias starts at -log(C - 1) (Cui et al.).
SIGMOID: tuple[str, ...] = tuple(e.name for e in LOSSES if e.activation == "sigmoid")

NORMALIZATION_NOTE = (
    "Weighted losses take normalization='weighted_mean' (default: batch loss = "
    "sum_i w_yi l_i / sum_i w_yi, the imbalanced CIFAR-10 protocol) or 'num_classes' "
    "(weights sum to C, plain batch mean, Cui et al.'s code and CIFAR-10-LT table)."
)


#: Valid `weighting` of the class-balanced sigmoid losses (the losses whose options include
#: "weighting"), the first the default. "example": the example's weight `sum_c y_c w_c` (w_y for
#: a single label) scales all its C binary terms, Cui et al.'s rule, unchanged for sparse and
#: one-hot labels; a multi-hot row with no positive weighs 0. "class": each class's binary term
#: is weighted by its own class's weight, `sum_c w_c BCE(z_c, y_c)`, so negatives count and
#: every example keeps its loss (multi-label data).
WEIGHTINGS: tuple[str, ...] = ("example", "class")

WEIGHTING_NOTE = (
    "Class-balanced sigmoid losses take weighting='example' (default: the example's weight "
    "sum_c y_c w_c scales its C binary terms, Cui et al.; a multi-hot row with no positive "
    "weighs 0) or 'class' (multi-label: sum_c w_c BCE(z_c, y_c), each class's term weighted by "
    "its own class, so every example counts)."
)


def format_table() -> str:
    """The catalogue as aligned text lines."""
    rows = [("name", "class", "arguments", "per-example loss")]
    rows += [(e.name, e.class_name, e.arguments, e.formula) for e in LOSSES]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines) + "\n\n" + NORMALIZATION_NOTE + "\n" + WEIGHTING_NOTE


# The models by config name (`model.name`): `tfimb.models` builds them, and tests check that
# its builders and these names agree.
MODEL_NAMES = ("resnet18_cifar", "resnet8", "resnet20", "resnet32", "resnet50")
#: The CIFAR ResNets, which take `model.shortcut` and `model.padding`.
CIFAR_RESNETS = ("resnet18_cifar", "resnet8", "resnet20", "resnet32")
#: The models that load pretrained `weights` (a file), besides `keras.applications` ones.
TAKES_WEIGHTS = ("resnet50",)
#: Config names of the form `keras.applications.<Class>` build that class.
APPLICATIONS = "keras.applications."
#: The classifier head: `"dense"` (logits) or `"cosine"` (`CosineClassifier`, for LDAM).
HEADS = ("dense", "cosine")
#: Where a CIFAR ResNet's shape changes: He et al.'s option B (`"projection"`) or A
#: (`"identity"`).
SHORTCUTS = ("projection", "identity")
#: Padding of the stride-2 3x3 convolutions: TensorFlow's SAME or PyTorch's symmetric.
PADDINGS = ("same", "symmetric")
