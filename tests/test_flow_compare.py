"""benchmarks/torch_realnvp.py is tfimb's RealNVP layer for layer: with tfimb's weights copied
in, the PyTorch model gives the same log-densities (inference and training mode) and has the
same parameters, for the paper's network and for every peer option at once. Needs PyTorch
(`pip install -e ".[benchmarks]"`); skipped without it."""

import math
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch")

from tfimb import flows  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_realnvp  # noqa: E402

OPTIONS = {
    "paper": {},
    "peer": {"skip_connections": True, "concat_relu": True, "width_doubling": True,
             "scale_parameterisation": "unit_tanh", "normalization": "none",
             "weight_init": "pytorch"},
    "peer_with_batch_norm": {"skip_connections": True, "concat_relu": True,
                             "network_momentum": 0.9},
}


def _randomised(model, seed=0):
    """Every weight of a built tfimb RealNVP away from its start, so that each one matters."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path.rsplit("/", 1)[-1]
        if name in ("moving_variance", "g", "gamma"):
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32))
        elif name != "v":
            w.assign(rng.normal(0, 0.3, size=w.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("name", list(OPTIONS))
def test_torch_realnvp_equals_tfimb(name, rng):
    options = OPTIONS[name]
    model = flows.RealNVP((8, 8, 3), num_scales=2, num_blocks=2, num_filters=4, **options)
    model.build()
    _randomised(model)
    torch.manual_seed(0)
    other = torch_realnvp.RealNVP((8, 8, 3), num_scales=2, num_blocks=2, num_filters=4,
                                  **options)
    torch_realnvp.load_tfimb_weights(other, model)
    assert (sum(p.numel() for p in other.parameters())
            == sum(int(np.prod(w.shape)) for w in model.trainable_weights))

    l = rng.normal(size=(4, 8, 8, 3)).astype(np.float32)
    nchw = torch.from_numpy(np.ascontiguousarray(l.transpose(0, 3, 1, 2)))
    other.eval()
    with torch.no_grad():
        expected = other.log_prob_logit(nchw).numpy()
    np.testing.assert_allclose(model.log_prob(l).numpy(), expected, rtol=1e-5, atol=2e-2)
    # Bits/dim of uint8 images: the same preprocessing (mid-bin noise: deterministic).
    images = rng.integers(0, 256, size=(4, 8, 8, 3)).astype(np.uint8)
    with torch.no_grad():
        bpd = other.bits_per_dim(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                 noise="mid").numpy()
    np.testing.assert_allclose(model.bits_per_dim(images, noise="mid").numpy(), bpd,
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(bpd)) and not math.isclose(bpd[0], bpd[1])
    # Training mode: batch statistics in the networks and the batch-norm bijectors (last:
    # both update running statistics).
    other.train()
    with torch.no_grad():
        expected = other.log_prob_logit(nchw).numpy()
    np.testing.assert_allclose(model._log_pl(tf.constant(l), True)[0].numpy(), expected,
                               rtol=1e-5, atol=2e-2)


def test_torch_weight_init_matches_tfimb_s():
    """Both frameworks start weight_init="pytorch" as torch.nn.utils.weight_norm of a fresh
    nn.Conv2d (g = ||v||, about 1/sqrt(3) per output channel) and "unit" at unit norm."""
    torch.manual_seed(0)
    conv = torch_realnvp.WeightNormConv2d(8, 64, 3, init="pytorch")
    norms = conv.v.detach().flatten(1).norm(dim=1)
    np.testing.assert_allclose(conv.g.detach().numpy(), norms.numpy(), rtol=1e-6)
    assert abs(float(norms.mean()) - 1 / math.sqrt(3)) < 0.05
    assert float(conv.bias.detach().abs().max()) <= 1 / math.sqrt(72)
    unit = torch_realnvp.WeightNormConv2d(8, 64, 3)
    assert bool((unit.g == 1).all()) and bool((unit.bias == 0).all())
