"""Independent NumPy (float64) references for the tfimb losses.

Written straight from the published formulas: softmax probabilities, then
`(1 - p)^gamma` and `log p` as the formulas read, with no log-space tricks. Valid for moderate
logits (no underflow in float64).
"""

import numpy as np


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cb_weights(counts, beta):
    """w_c = (1 - beta) / (1 - beta^n_c), rescaled to sum to C."""
    n = np.asarray(counts, np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w * n.size / w.sum()


def icf_weights(counts):
    w = 1.0 / np.asarray(counts, np.float64)
    return w * w.size / w.sum()


def ldam_margins(counts, max_margin):
    q = np.asarray(counts, np.float64) ** -0.25
    return max_margin * q / q.max()


def loss(onehot, logits, gamma=0.0, weights=None, normalization="weighted_mean", offset=None,
         margins=None, scale=1.0, label_smoothing=0.0):
    """Per-example values; the batch loss is their mean."""
    y = np.asarray(onehot, np.float64)
    z = np.asarray(logits, np.float64)
    if margins is not None:
        z = z - margins * y
    z = scale * z
    if offset is not None:
        z = z + offset
    p = softmax(z)
    c = z.shape[-1]
    q = y * (1 - label_smoothing) + label_smoothing / c
    values = -(q * (1.0 - p) ** gamma * np.log(p)).sum(axis=-1)
    if weights is not None:
        w = y @ weights
        values = values * (w / w.mean() if normalization == "weighted_mean" else w)
    return values


def sigmoid_loss(targets, logits, gamma=0.0, weights=None, normalization="weighted_mean",
                 label_smoothing=0.0):
    """Per-example one-vs-all sigmoid losses as Cui et al.'s code writes them: binary
    cross-entropy from sigmoid probabilities, modulator exp(-gamma y z - gamma log(1 + e^-z)),
    the example's weight sum_c y_c w_c on every class's term."""
    y = np.asarray(targets, np.float64)
    z = np.asarray(logits, np.float64)
    q = y * (1 - label_smoothing) + 0.5 * label_smoothing
    p = 1.0 / (1.0 + np.exp(-z))
    bce = -(q * np.log(p) + (1 - q) * np.log(1 - p))
    modulator = np.exp(-gamma * q * z - gamma * np.log(1 + np.exp(-z)))
    values = (modulator * bce).sum(axis=-1)
    if weights is not None:
        w = y @ weights
        values = values * (w / w.mean() if normalization == "weighted_mean" else w)
    return values


def sigmoid_loss_class_weighted(targets, logits, weights, gamma=0.0, label_smoothing=0.0):
    """Per-example one-vs-all sigmoid losses with class-wise weights (`weighting="class"`):
    each class's binary term, positive or negative, times that class's own weight,
    `sum_c w_c m_c BCE(z_c, y_c)`, written term by term. A row with no positive keeps its
    loss. The weights sum to C, so every example's C terms weigh C in all whatever its labels:
    both normalizations give these values, and their (sample-weighted) mean is the batch loss.
    """
    y = np.asarray(targets, np.float64)
    z = np.asarray(logits, np.float64)
    w = np.asarray(weights, np.float64)
    assert np.isclose(w.sum(), w.size), "class-balanced weights sum to C"
    out = np.zeros(len(y))
    for i in range(len(y)):
        for c in range(y.shape[1]):
            q = y[i, c] * (1 - label_smoothing) + 0.5 * label_smoothing
            p = 1.0 / (1.0 + np.exp(-z[i, c]))
            bce = -(q * np.log(p) + (1 - q) * np.log(1 - p))
            modulator = np.exp(-gamma * q * z[i, c] - gamma * np.log(1 + np.exp(-z[i, c])))
            out[i] += w[c] * modulator * bce
    return out


def reference_for(name, kwargs, onehot, logits):
    """Reference values for the tfimb loss `name` built with `kwargs`."""
    kw = dict(kwargs)
    common = dict(label_smoothing=kw.pop("label_smoothing", 0.0))
    counts = kw.pop("counts", None)
    norm = kw.pop("normalization", "weighted_mean")
    if kw.pop("weighting", "example") == "class":  # Both normalizations give the same values.
        assert name in ("class_balanced_sigmoid", "class_balanced_sigmoid_focal"), name
        out = sigmoid_loss_class_weighted(onehot, logits, cb_weights(counts, kw.pop("beta")),
                                          gamma=kw.pop("gamma", 0.0), **common)
        assert not kw, f"unused reference arguments {kw}"
        return out
    if name == "softmax_cross_entropy":
        out = loss(onehot, logits, **common)
    elif name == "focal":
        out = loss(onehot, logits, gamma=kw.pop("gamma"), **common)
    elif name == "inverse_class_frequency":
        out = loss(onehot, logits, weights=icf_weights(counts), normalization=norm, **common)
    elif name == "class_balanced_softmax":
        out = loss(onehot, logits, weights=cb_weights(counts, kw.pop("beta")),
                   normalization=norm, **common)
    elif name == "class_balanced_focal":
        out = loss(onehot, logits, gamma=kw.pop("gamma"),
                   weights=cb_weights(counts, kw.pop("beta")), normalization=norm, **common)
    elif name == "balanced_softmax":
        out = loss(onehot, logits, offset=np.log(counts), **common)
    elif name == "logit_adjusted":
        pi = np.asarray(counts, np.float64) / np.sum(counts)
        out = loss(onehot, logits, offset=kw.pop("tau") * np.log(pi), **common)
    elif name == "ldam":
        beta = kw.pop("beta", None)
        weights = None if beta is None else cb_weights(counts, beta)
        out = loss(onehot, logits, margins=ldam_margins(counts, kw.pop("max_margin")),
                   scale=kw.pop("scale"), weights=weights, normalization=norm, **common)
    elif name == "sigmoid_cross_entropy":
        out = sigmoid_loss(onehot, logits, **common)
    elif name == "sigmoid_focal":
        out = sigmoid_loss(onehot, logits, gamma=kw.pop("gamma"), **common)
    elif name == "class_balanced_sigmoid":
        out = sigmoid_loss(onehot, logits, weights=cb_weights(counts, kw.pop("beta")),
                           normalization=norm, **common)
    elif name == "class_balanced_sigmoid_focal":
        out = sigmoid_loss(onehot, logits, gamma=kw.pop("gamma"),
                           weights=cb_weights(counts, kw.pop("beta")), normalization=norm,
                           **common)
    else:
        raise KeyError(name)
    assert not kw, f"unused reference arguments {kw}"
    return out
