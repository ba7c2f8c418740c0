"""tfimb's RealNVP written in PyTorch, layer for layer: the other arm of `flow_compare.py`.

The same architecture and options as `tfimb.flows.RealNVP` (its docstring is the spec), so that
the two frameworks run the same arithmetic: multi-scale layout (3 checkerboard couplings,
squeeze in the authors' channel order, 3 channel couplings, factor out half, recurse; 4
checkerboard couplings at the final scale), masked affine couplings `y = b x + (1 - b)(x exp(s)
+ t)` with s = scale * tanh(raw s), s/t ResNets of weight-normalised convolutions
(w = g v / ||v||, v ~ N(0, 0.05), g = 1) with pre-activation blocks, the batch-norm bijector
with running statistics (momentum 0.9, epsilon 1e-4) after every coupling, and the options
skip_connections, concat_relu, width_doubling, scale_parameterisation, normalization,
weight_init and network_momentum (the networks' batch norms: Keras' epsilon 1e-3, running momentum 0.99 by
default). Training: the logit transform (alpha 0.05) of uniformly dequantised images, bits/dim
plus l2 * sum(g^2) over the weight-norm scales, Adam (Keras' epsilon 1e-7), gradients clipped
to a global norm.

Tensors are NCHW, PyTorch's layout (what a PyTorch user writes); masks and the squeeze follow
tfimb's channel order, so `load_tfimb_weights` copies a tfimb model's weights in and
tests/test_flow_compare.py checks that both give the same log-densities.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ALPHA = 0.05
SCALE_INITS = {"zero_tanh": 0.0, "unit_tanh": 1.0}


class WeightNormConv2d(nn.Module):
    """w = g v / ||v||. init "unit": v ~ N(0, 0.05^2), g = 1, zero bias; "pytorch": a fresh
    nn.Conv2d's weight and bias (U(-b, b), b = 1 / sqrt(fan_in)) with g = ||v||, as
    `torch.nn.utils.weight_norm` leaves it."""

    def __init__(self, cin, cout, kernel_size=3, bias=True, init="unit"):
        super().__init__()
        if init == "unit":
            v, b = torch.randn(cout, cin, kernel_size, kernel_size) * 0.05, torch.zeros(cout)
        else:
            conv = nn.Conv2d(cin, cout, kernel_size)
            v, b = conv.weight.detach().clone(), conv.bias.detach().clone()
        self.v = nn.Parameter(v)
        self.g = nn.Parameter(torch.ones(cout) if init == "unit"
                              else v.flatten(1).norm(dim=1).clone())
        self.bias = nn.Parameter(b) if bias else None
        self.padding = kernel_size // 2

    def forward(self, x):
        norm = torch.sqrt(self.v.pow(2).sum(dim=(1, 2, 3)) + 1e-12)
        weight = self.v * (self.g / norm)[:, None, None, None]
        return F.conv2d(x, weight, self.bias, padding=self.padding)


def _batch_norm(channels, momentum):
    # Keras' BatchNormalization: epsilon 1e-3, moving = momentum moving + (1 - momentum) batch
    # (PyTorch's momentum is the batch's share).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=1.0 - momentum)


class CouplingNetwork(nn.Module):
    def __init__(self, channels, num_blocks, filters, skip_connections=False,
                 concat_relu=False, scale_init=0.0, input_gain=1.0, bn_momentum=0.99,
                 weight_init="unit"):
        super().__init__()
        conv = lambda *a, **k: WeightNormConv2d(*a, init=weight_init, **k)  # noqa: E731
        self.skip_connections, self.concat_relu = skip_connections, concat_relu
        self.input_gain = input_gain
        if concat_relu:
            self.in_bn = _batch_norm(channels, bn_momentum)
        self.stem = conv(2 * channels if concat_relu else channels, filters)
        self.blocks = nn.ModuleList(nn.ModuleList(
            [_batch_norm(filters, bn_momentum), conv(filters, filters, bias=False),
             _batch_norm(filters, bn_momentum), conv(filters, filters)]) for _ in range(num_blocks))
        if skip_connections:
            self.skips = nn.ModuleList(conv(filters, filters, 1)
                                       for _ in range(num_blocks + 1))
        self.out_bn = _batch_norm(filters, bn_momentum)
        self.out = conv(filters, 2 * channels, 1 if skip_connections else 3)
        self.scale = nn.Parameter(torch.full((channels,), float(scale_init)))

    def forward(self, x):
        if self.concat_relu:
            x = self.in_bn(x) * self.input_gain
            x = F.relu(torch.cat([x, -x], dim=1))
        h = self.stem(x)
        skip = self.skips[0](h) if self.skip_connections else None
        for i, (bn1, conv1, bn2, conv2) in enumerate(self.blocks):
            h = h + conv2(F.relu(bn2(conv1(F.relu(bn1(h))))))
            if skip is not None:
                skip = skip + self.skips[i + 1](h)
        raw = self.out(F.relu(self.out_bn(h if skip is None else skip)))
        raw_s, t = raw.chunk(2, dim=1)
        return self.scale[None, :, None, None] * torch.tanh(raw_s), t


def checkerboard_mask(height, width, parity):
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return torch.tensor(((rows + cols + parity) % 2)[None, None], dtype=torch.float32)


def squeeze(x):
    """[B, C, H, W] -> [B, 4C, H/2, W/2]; pixel (2i + dy, 2j + dx) channel c -> 4c + 2dy + dx."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x):
    b, c4, h, w = x.shape
    x = x.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c4 // 4, 2 * h, 2 * w)


class Coupling(nn.Module):
    """A checkerboard coupling's network reads b * x; a channel coupling's reads the kept half
    of the channels and scales the other half."""

    def __init__(self, mask_type, parity, network):
        super().__init__()
        self.mask_type, self.parity, self.network = mask_type, parity, network
        self._masks = {}

    def forward(self, x):
        """data -> latent: (z, log|det dz/dx| per example)."""
        if self.mask_type == "checkerboard":
            key = (x.shape[2], x.shape[3])
            if key not in self._masks:
                self._masks[key] = checkerboard_mask(*key, self.parity)
            b = self._masks[key]
            s, t = self.network(b * x)
            s, t = (1 - b) * s, (1 - b) * t
            return b * x + (1 - b) * (x * torch.exp(s) + t), s.sum(dim=(1, 2, 3))
        kept, changed = x.chunk(2, dim=1)
        if self.parity == 1:
            kept, changed = changed, kept
        s, t = self.network(kept)
        changed = changed * torch.exp(s) + t
        y = torch.cat([kept, changed] if self.parity == 0 else [changed, kept], dim=1)
        return y, s.sum(dim=(1, 2, 3))


class RunningBatchNorm(nn.Module):
    """The batch-norm bijector: (x - mu) / sqrt(var + eps) with mu = m mu_run + (1 - m) mu_batch
    in training (gradients through the batch part), the running statistics in evaluation."""

    def __init__(self, channels, momentum=0.9, epsilon=1e-4):
        super().__init__()
        self.momentum, self.epsilon = momentum, epsilon
        self.register_buffer("moving_mean", torch.zeros(channels))
        self.register_buffer("moving_variance", torch.ones(channels))

    def forward(self, x):
        if self.training:
            m = self.momentum
            mean = m * self.moving_mean + (1 - m) * x.mean(dim=(0, 2, 3))
            var = m * self.moving_variance + (1 - m) * x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():  # tfimb writes them once the step's loss is computed.
                self.moving_mean.copy_(mean)
                self.moving_variance.copy_(var)
        else:
            mean, var = self.moving_mean, self.moving_variance
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.epsilon)[None, :, None, None]
        log_det = -0.5 * x.shape[2] * x.shape[3] * torch.log(var + self.epsilon).sum()
        return y, log_det.expand(x.shape[0])


class RealNVP(nn.Module):
    def __init__(self, image_shape=(32, 32, 3), num_scales=2, num_blocks=8, num_filters=64,
                 momentum=0.9, epsilon=1e-4, alpha=ALPHA, skip_connections=False,
                 concat_relu=False, width_doubling=False, scale_parameterisation="zero_tanh",
                 normalization="batch_norm", network_momentum=0.99, weight_init="unit"):
        super().__init__()
        self.image_shape, self.alpha, self.num_scales = tuple(image_shape), alpha, num_scales
        self.num_dims = int(np.prod(image_shape))
        c = image_shape[2]
        self.scales = nn.ModuleList()
        for k in range(num_scales):
            final = k == num_scales - 1
            steps = [("checkerboard", p, c) for p in ((0, 1, 0, 1) if final else (0, 1, 0))]
            if not final:
                steps += [("channel", p, 4 * c) for p in (0, 1, 0)]
            layers = nn.ModuleList()
            for mask, parity, channels in steps:
                network_channels = channels if mask == "checkerboard" else channels // 2
                filters = num_filters * 2 ** k * (2 if width_doubling and mask == "channel"
                                                  else 1)
                network = CouplingNetwork(
                    network_channels, num_blocks, filters, skip_connections, concat_relu,
                    SCALE_INITS[scale_parameterisation], 2.0 if mask == "checkerboard" else 1.0,
                    network_momentum, weight_init)
                layers.append(Coupling(mask, parity, network))
                if normalization == "batch_norm":
                    layers.append(RunningBatchNorm(channels, momentum, epsilon))
            self.scales.append(layers)
            c *= 2

    def _to_latent(self, k, x):
        log_det = torch.zeros(x.shape[0])
        squeezed = False
        for layer in self.scales[k]:
            if (isinstance(layer, Coupling) and layer.mask_type == "channel"
                    and not squeezed):
                x, squeezed = squeeze(x), True
            x, ld = layer(x)
            log_det = log_det + ld
        if k < self.num_scales - 1:
            keep = x.shape[1] // 2
            inner, ld = self._to_latent(k + 1, x[:, :keep])
            x, log_det = torch.cat([inner, x[:, keep:]], dim=1), log_det + ld
            x = unsqueeze(x)
        return x, log_det

    def log_prob_logit(self, l):
        z, log_det = self._to_latent(0, l)
        prior = -0.5 * (z.pow(2).sum(dim=(1, 2, 3)) + self.num_dims * math.log(2 * math.pi))
        return prior + log_det

    def bits_per_dim(self, images, noise="uniform", generator=None):
        """uint8 images [B, C, H, W] (torch.uint8) -> bits/dim per example."""
        u = (torch.rand(images.shape, generator=generator) if noise == "uniform"
             else torch.full(images.shape, 0.5))
        x = (images.float() + u) / 256.0
        p = self.alpha + (1 - 2 * self.alpha) * x
        l = torch.log(p) - torch.log1p(-p)
        logit_det = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).sum(
            dim=(1, 2, 3))
        log_px = self.log_prob_logit(l) + logit_det
        return (-log_px + self.num_dims * math.log(256.0)) / (self.num_dims * math.log(2.0))

    def weight_norm_scales(self):
        return [p for n, p in self.named_parameters() if n.endswith(".g")]


def load_tfimb_weights(torch_model: RealNVP, tfimb_model) -> None:
    """Copy a `tfimb.flows.RealNVP`'s weights (same options) into `torch_model`."""
    def wn(dst, src):
        dst.v.data = torch.tensor(np.transpose(src.v.numpy(), (3, 2, 0, 1)))
        dst.g.data = torch.tensor(src.g.numpy())
        if src.bias is not None:
            dst.bias.data = torch.tensor(src.bias.numpy())

    def bn(dst, src):
        dst.weight.data = torch.tensor(src.gamma.numpy())
        dst.bias.data = torch.tensor(src.beta.numpy())
        dst.running_mean.data = torch.tensor(src.moving_mean.numpy())
        dst.running_var.data = torch.tensor(src.moving_variance.numpy())

    for k, scale in enumerate(tfimb_model._layout):
        layers = iter(torch_model.scales[k])
        for _, _, network, moments in scale.couplings:
            dst = next(layers).network
            if network.concat_relu:
                bn(dst.in_bn, network.in_bn)
            wn(dst.stem, network.stem)
            for d_block, s_block in zip(dst.blocks, network.blocks):
                for d, s in zip(d_block, s_block):
                    (bn if isinstance(d, nn.BatchNorm2d) else wn)(d, s)
            if network.skip_connections:
                for d, s in zip(dst.skips, network.skips):
                    wn(d, s)
            bn(dst.out_bn, network.out_bn)
            wn(dst.out, network.out)
            dst.scale.data = torch.tensor(network.scale.numpy())
            if moments is not None:
                running = next(layers)
                running.moving_mean.data = torch.tensor(moments.moving_mean.numpy())
                running.moving_variance.data = torch.tensor(moments.moving_variance.numpy())


def from_config(model_cfg, image_shape) -> RealNVP:
    """The PyTorch twin of `tfimb.experiments.density.build_model` for a flow config's `model`
    section (unconditional)."""
    m = model_cfg
    return RealNVP(tuple(image_shape), m.num_scales, m.num_blocks, m.num_filters, m.momentum,
                   m.epsilon, m.alpha, m.skip_connections, m.concat_relu, m.width_doubling,
                   m.scale_parameterisation, m.normalization, m.network_momentum,
                   m.weight_init)


def training_loss(model: RealNVP, images: torch.Tensor, l2: float):
    """(loss, mean bits/dim) of a batch of images [B, C, H, W] (uint8 or integer-valued float):
    mean bits/dim with fresh uniform dequantisation noise + l2 * sum(g^2) over the weight-norm
    scales, as tfimb's `RealNVP.train_step`."""
    bpd = model.bits_per_dim(images).mean()
    return bpd + l2 * sum(g.pow(2).sum() for g in model.weight_norm_scales()), bpd
