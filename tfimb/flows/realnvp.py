"""The multi-scale RealNVP density model (Dinh, Sohl-Dickstein, Bengio, ICLR 2017).

Architecture, data -> latent (the paper's f), for an image [H, W, C]:

    scale k < num_scales - 1:  3 checkerboard couplings (parities 0, 1, 0), squeeze to
        [H/2, W/2, 4C], 3 channel couplings (parities 0, 1, 0), factor out the second half of
        the channels (they go straight to the latent), recurse on the first half, unsqueeze;
    final scale:               4 checkerboard couplings (parities 0, 1, 0, 1).

Every coupling is followed by a `RunningBatchNorm` bijector (unless `normalization="none"`). The s/t networks of scale k have
`num_filters * 2**k` feature maps. The latent z has the shape of x and a standard normal prior,
or with `num_classes` a class-conditional diagonal Gaussian N(mu_y, diag(sigma_y^2))
(`tfimb.flows.conditional`; the flow itself is shared by the classes).

`RealNVP` is a Keras model that owns every network and batch-norm statistic (TFP bijectors do
not track Keras variables). Its layout (`Scale` per scale) is computed once; each call
instantiates the steps for its mode (training or inference) from it. Densities, latents and
samples walk those steps with `to_latent` / `to_data` (one network evaluation per coupling, no
bijector cache); `bijector(training)` composes the same steps as one `tfb.Chain` between the
preprocessed (logit) data space and the latent space, whose forward direction generates.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfimb import _checks
from tfimb._checks import ArrayLike, TensorLike
from tfimb.fused_batch_norm import FusedBatchNormalization
from tfimb.flows import bijectors as flow_bijectors
from tfimb.flows import conditional, preprocessing

tfb = tfp.bijectors
tfd = tfp.distributions

# One scale of the flow, computed once: its couplings [(mask, parity, network, moments)] in
# data -> latent order (moments: None with normalization "none"), the coupling before which it squeezes (None: no squeeze), and the
# channels its inner scale keeps after the squeeze (None at the final scale).
Scale = collections.namedtuple("Scale", ["couplings", "squeeze_before", "keep"])

# `scale_parameterisation`: s = scale * tanh(raw s), the per-channel scale starting at 0 (the
# paper's stable start: every coupling starts as a pure shift) or at 1 (chrischute/real-nvp's
# weight-normalised rescale g).
SCALE_PARAMETERISATIONS = {"zero_tanh": 0.0, "unit_tanh": 1.0}

# `normalization`: what follows every coupling: the paper's batch-norm bijector with running
# statistics, or nothing (chrischute/real-nvp, whose history removed its batch-norm bijector).
NORMALIZATIONS = ("batch_norm", "none")

# `weight_init`: the start of the weight-normalised convolutions (`WeightNormConv2D`).
WEIGHT_INITS = ("unit", "pytorch")


# ---------------------------------------------------------------------------------------------
# Networks (Keras layers, owned by the model).


@keras.saving.register_keras_serializable(package="tfimb")
class WeightNormConv2D(keras.layers.Layer):
    """Conv2D with a weight-normalised kernel: `w = g * v / ||v||` per output channel
    (Salimans & Kingma 2016).

    `init="unit"`: v ~ N(0, 0.05^2), g = 1 and a zero bias, so w starts as a unit-norm v.
    `init="pytorch"`: what `torch.nn.utils.weight_norm` makes of a fresh `nn.Conv2d` (the public
    PyTorch RealNVP's): v ~ U(-b, b) and bias ~ U(-b, b) with b = 1 / sqrt(fan_in), and g = ||v||
    (w = v: about 0.58 per output channel, whatever the fan-in)."""

    def __init__(self, filters: int, kernel_size: int = 3, use_bias: bool = True,
                 init: str = "unit", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.use_bias = filters, kernel_size, use_bias
        if init not in WEIGHT_INITS:
            raise _checks.invalid_value("init", f"one of {list(WEIGHT_INITS)}", init)
        self.init = init

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        k = self.kernel_size
        bound = 1.0 / math.sqrt(k * k * input_shape[-1])
        uniform = keras.initializers.RandomUniform(-bound, bound)
        unit = self.init == "unit"
        self.v = self.add_weight(shape=(k, k, input_shape[-1], self.filters), name="v",
                                 initializer=keras.initializers.RandomNormal(stddev=0.05)
                                 if unit else uniform)
        self.g = self.add_weight(shape=(self.filters,), name="g", initializer="ones")
        if not unit:
            self.g.assign(tf.norm(tf.reshape(self.v, [-1, self.filters]), axis=0))
        self.bias = (self.add_weight(shape=(self.filters,), name="bias",
                                     initializer="zeros" if unit else uniform)
                     if self.use_bias else None)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        norm = tf.sqrt(tf.reduce_sum(tf.square(self.v), axis=[0, 1, 2]) + 1e-12)
        kernel = self.v * (self.g / norm)
        y = tf.nn.conv2d(x, tf.cast(kernel, x.dtype), 1, "SAME")
        # bias_add, not "+": its gradient is one BiasAddGrad instead of a broadcast Sum, and
        # oneDNN fuses it into the convolution.
        return y if self.bias is None else tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "use_bias": self.use_bias, "init": self.init}


class CouplingNetwork(keras.layers.Layer):
    """s and t of one coupling: a ResNet of weight-normalised 3x3 convolutions with batch norm
    and ReLU (pre-activation blocks), output 2C maps split into raw s and t;
    `s = scale * tanh(raw s)` with a per-channel scale that starts at zero, so the coupling
    starts as a pure shift by t and log-det 0.

    Options (all off by default, which is the paper's network; on, they follow the public
    PyTorch RealNVP, chrischute/real-nvp):
        skip_connections: a weight-normalised 1x1 convolution of the stem's output and of every
            residual block's output, all summed; the output batch norm and ReLU read that sum,
            and the output convolution is 1x1 (the peer's output layer; 3x3 without skips).
        concat_relu: the network's input layer is the peer's: a batch norm of the masked input
            (times `input_gain`: 2 under a checkerboard mask, where half of the input is the
            mask's zeros), then `concat(relu(x), relu(-x))`, which the stem reads (2C maps).
            Without it the stem reads the masked input itself.
        scale_init: the per-channel scale's start, 0 ("zero_tanh") or 1 ("unit_tanh").

    The batch norms are Keras' `BatchNormalization` (same arguments, weights and math) run by
    TensorFlow's fused kernel (`tfimb.fused_batch_norm`): the flow is TensorFlow-only anyway,
    and the fused kernel made the training step faster (benchmarks/NOTES.md)."""

    def __init__(self, channels: int, num_blocks: int, num_filters: int,
                 skip_connections: bool = False, concat_relu: bool = False,
                 scale_init: float = 0.0, input_gain: float = 1.0,
                 batch_norm_momentum: float = 0.99, weight_init: str = "unit",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The running statistics' momentum of the network's batch norms (used in inference).
        bn = lambda name: FusedBatchNormalization(momentum=batch_norm_momentum,  # noqa: E731
                                                  name=name)
        self.channels = channels
        self.skip_connections, self.concat_relu = skip_connections, concat_relu
        self.scale_init, self.input_gain = scale_init, input_gain
        if concat_relu:  # Only then: the default network keeps its layers and weights.
            self.in_bn = bn("in_bn")
        conv = lambda *a, **k: WeightNormConv2D(*a, init=weight_init, **k)  # noqa: E731
        self.stem = conv(num_filters, name="stem")
        self.blocks: list[list[keras.layers.Layer]] = []
        for i in range(num_blocks):
            self.blocks.append([bn(f"block{i}_bn1"),
                                # No bias: the batch norm after it would remove it.
                                conv(num_filters, use_bias=False, name=f"block{i}_conv1"),
                                bn(f"block{i}_bn2"),
                                conv(num_filters, name=f"block{i}_conv2")])
        if skip_connections:
            self.skips = [conv(num_filters, kernel_size=1, name="stem_skip")] + [
                conv(num_filters, kernel_size=1, name=f"block{i}_skip")
                for i in range(num_blocks)]
        self.out_bn = bn("out_bn")
        self.out = conv(2 * channels, kernel_size=1 if skip_connections else 3,
                                    name="out")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.scale = self.add_weight(shape=(self.channels,), name="scale",
                                     initializer=keras.initializers.Constant(self.scale_init)
                                     if self.scale_init else "zeros")

    def call(self, x: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        if self.concat_relu:
            x = self.in_bn(x, training=training)
            if self.input_gain != 1.0:
                x = x * self.input_gain
            x = tf.nn.relu(tf.concat([x, -x], axis=-1))
        h = self.stem(x)
        skip = self.skips[0](h) if self.skip_connections else None
        for i, (bn1, conv1, bn2, conv2) in enumerate(self.blocks):
            r = conv1(tf.nn.relu(bn1(h, training=training)))
            h = h + conv2(tf.nn.relu(bn2(r, training=training)))
            if skip is not None:
                skip = skip + self.skips[i + 1](h)
        if skip is not None:
            h = skip
        raw = self.out(tf.nn.relu(self.out_bn(h, training=training)))
        raw_s, t = tf.split(raw, 2, axis=-1)  # Gradient: a concat, not two StridedSliceGrads.
        return self.scale * tf.tanh(raw_s), t


class MovingMoments(keras.layers.Layer):
    """Running per-channel mean and variance of one `RunningBatchNorm` bijector."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.moving_mean = self.add_weight(shape=(channels,), name="moving_mean",
                                           initializer="zeros", trainable=False,
                                           aggregation="mean")
        self.moving_variance = self.add_weight(shape=(channels,), name="moving_variance",
                                               initializer="ones", trainable=False,
                                               aggregation="mean")


# ---------------------------------------------------------------------------------------------
# The model.


@keras.saving.register_keras_serializable(package="tfimb")
class RealNVP(keras.Model):
    """Multi-scale RealNVP on images of `image_shape` [H, W, C] (H and W divisible by
    2**(num_scales - 1)).

    Args:
        image_shape: (H, W, C) of the uint8 images.
        num_scales: scales; each but the last squeezes and factors out half of its units.
        num_blocks: residual blocks per s/t network (paper, CIFAR-10: 8).
        num_filters: feature maps of the first scale's s/t networks (CIFAR-10: 64); doubled at
            each coarser scale.
        momentum: running-average momentum of the batch-norm bijectors.
        network_momentum: running-average momentum of the batch norms inside the s/t networks
            (0.99, Keras' default; 0.9 is PyTorch's default, the peer's).
        epsilon: their variance epsilon.
        alpha: the logit transform's alpha (0.05).
        l2: L2 penalty on the weight-norm scales g (paper: 5e-5).
        seed: dequantisation noise seed for training.
        validate_args: the bijectors assert finite scales and shifts, positive variances and
            even image sizes as they run (slower; for debugging a diverging flow).
        num_classes: None (unconditional: z ~ N(0, I)) or the number of classes of a
            class-conditional model, z ~ N(mu_y, diag(sigma_y^2)) with a mean and log-scale
            per class and latent dimension, zero-initialised (`tfimb.flows.conditional`).
        skip_connections: the s/t networks sum a 1x1 weight-normalised convolution of the stem's
            and of every residual block's output, and their output layers read that sum.
        concat_relu: the s/t networks' input layer is a batch norm (times 2 under a
            checkerboard mask) and concat(relu(x), relu(-x)).
        width_doubling: the channel couplings of every non-final scale use twice the scale's
            feature maps.
        scale_parameterisation: "zero_tanh" (s = scale * tanh(raw s), scale starting at 0) or
            "unit_tanh" (the same with scale starting at 1).
        normalization: "batch_norm" (the paper's: a `RunningBatchNorm` bijector after every
            coupling) or "none" (couplings follow each other directly).
        weight_init: "unit" (weight-normalised convolutions start unit-norm, zero bias) or
            "pytorch" (`torch.nn.utils.weight_norm` of a fresh `nn.Conv2d`, the peer's;
            `WeightNormConv2D`).
        (The last five default to the paper's network; skip_connections, concat_relu,
        width_doubling, "unit_tanh" and "none" are the public PyTorch RealNVP's,
        chrischute/real-nvp.)

    Methods take uint8 images unless they say otherwise: `bits_per_dim`, `encode` (to z),
    `decode` (z to uint8), `sample(n, temperature)`; `log_prob(l)` is the density of
    preprocessed (logit-space) data. `fit` on batches of uint8 images trains by bits/dim.
    A conditional model takes int class ids `labels` (one per image) in `log_prob`,
    `bits_per_dim`, `sample` and `call`, and batches of (images, labels) in `fit`; an
    unconditional model refuses them (but `fit` ignores the labels of (images, labels)
    batches, Keras' y). A third batch element (Keras' sample_weight) weights each example's
    bits/dim in the training loss (the reported bits/dim stays the unweighted mean).
    """

    def __init__(self, image_shape: Sequence[int], num_scales: int = 2, num_blocks: int = 8,
                 num_filters: int = 64, momentum: float = 0.9, epsilon: float = 1e-4,
                 network_momentum: float = 0.99,
                 alpha: float = preprocessing.ALPHA, l2: float = 5e-5, seed: int = 0,
                 validate_args: bool = False, num_classes: int | None = None,
                 skip_connections: bool = False, concat_relu: bool = False,
                 width_doubling: bool = False, scale_parameterisation: str = "zero_tanh",
                 normalization: str = "batch_norm", weight_init: str = "unit", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise _checks.invalid_value("image_shape", "(height, width, channels)", image_shape)
        num_scales = _checks.check_int("num_scales", num_scales, 1)
        factor = 2 ** (num_scales - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise _checks.invalid_value(
                "image_shape", f"height and width divisible by 2**(num_scales - 1) = {factor} "
                f"(num_scales={num_scales})", image_shape)
        self.image_shape = image_shape
        self.num_scales = num_scales
        self.num_blocks = _checks.check_int("num_blocks", num_blocks, 1)
        self.num_filters = _checks.check_int("num_filters", num_filters, 1)
        self.momentum = _checks.check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
        self.network_momentum = _checks.check_range("network_momentum", network_momentum, 0.0,
                                                    1.0, high_inclusive=False)
        self.epsilon = _checks.check_range("epsilon", epsilon, 0.0, low_inclusive=False)
        self.alpha = _checks.check_range("alpha", alpha, 0.0, 0.5, low_inclusive=False,
                                         high_inclusive=False)
        self.l2 = _checks.check_range("l2", l2, 0.0)
        self.seed = seed
        self.validate_args = bool(validate_args)
        self.skip_connections = _checks.check_bool("skip_connections", skip_connections)
        self.concat_relu = _checks.check_bool("concat_relu", concat_relu)
        self.width_doubling = _checks.check_bool("width_doubling", width_doubling)
        if (not isinstance(scale_parameterisation, str)
                or scale_parameterisation not in SCALE_PARAMETERISATIONS):
            raise _checks.invalid_value("scale_parameterisation",
                                        f"one of {list(SCALE_PARAMETERISATIONS)}",
                                        scale_parameterisation)
        self.scale_parameterisation = scale_parameterisation
        if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
            raise _checks.invalid_value("normalization", f"one of {list(NORMALIZATIONS)}",
                                        normalization)
        self.normalization = normalization
        if not isinstance(weight_init, str) or weight_init not in WEIGHT_INITS:
            raise _checks.invalid_value("weight_init", f"one of {list(WEIGHT_INITS)}",
                                        weight_init)
        self.weight_init = weight_init
        self.num_dims = math.prod(image_shape)
        self._layout = self._make_layout()
        self.num_classes = (None if num_classes is None
                            else _checks.check_int("num_classes", num_classes, 1))
        # Only a conditional model owns prior weights: the unconditional one keeps its weights.
        self.class_prior = (None if self.num_classes is None else conditional.ClassPrior(
            self.num_classes, image_shape, name="class_prior"))
        self.noise_seed = keras.random.SeedGenerator(seed)
        self.bpd_tracker = keras.metrics.Mean(name="bits_per_dim")
        self._built_flow = False

    def _make_layout(self):
        """The scales (`Scale`), with their networks and running moments, built once."""
        h, w, c = self.image_shape
        layout = []
        for k in range(self.num_scales):
            filters = self.num_filters * 2 ** k
            final = k == self.num_scales - 1
            steps = [("checkerboard", p, c) for p in ((0, 1, 0, 1) if final else (0, 1, 0))]
            if not final:
                steps += [("channel", p, 4 * c) for p in (0, 1, 0)]
            couplings = []
            for i, (mask, parity, channels) in enumerate(steps):
                # A channel coupling's network reads the kept half and scales the other half.
                network_channels = channels if mask == "checkerboard" else channels // 2
                # width_doubling: the channel couplings of a non-final scale use twice its maps.
                doubled = self.width_doubling and mask == "channel"
                network = CouplingNetwork(
                    network_channels, self.num_blocks, 2 * filters if doubled else filters,
                    skip_connections=self.skip_connections, concat_relu=self.concat_relu,
                    scale_init=SCALE_PARAMETERISATIONS[self.scale_parameterisation],
                    input_gain=2.0 if mask == "checkerboard" else 1.0,
                    batch_norm_momentum=self.network_momentum, weight_init=self.weight_init,
                    name=f"scale{k}_coupling{i}_{mask}")
                moments = (MovingMoments(channels, name=f"scale{k}_coupling{i}_moments")
                           if self.normalization == "batch_norm" else None)
                couplings.append((mask, parity, network, moments))
            # Non-final scales squeeze before their channel couplings and keep half of the
            # squeezed channels (4C / 2) for the next scale.
            layout.append(Scale(couplings, None if final else 3, None if final else 2 * c))
            h, w, c = h // 2, w // 2, 2 * c
        return layout

    # -- The steps -------------------------------------------------------------------------

    def steps(self, training: bool = False) -> tuple[list[flow_bijectors.Step],
                                                     list[flow_bijectors.RunningBatchNorm]]:
        """(data -> latent steps of the whole flow, its batch-norm bijectors).

        `training=True`: batch statistics in the coupling networks and the batch-norm bijectors
        (whose running statistics change only through `train_step`)."""
        batch_norms: list[flow_bijectors.RunningBatchNorm] = []
        inner: list[flow_bijectors.Step] | None = None
        for k in reversed(range(self.num_scales)):
            scale = self._layout[k]
            steps: list[flow_bijectors.Step] = []
            for i, (mask, parity, network, moments) in enumerate(scale.couplings):
                if i == scale.squeeze_before:
                    steps.append(flow_bijectors.Unsqueeze(self.validate_args,
                                                          name=f"scale{k}_squeeze"))
                steps.append(flow_bijectors.AffineCoupling(
                    network, mask, parity, training=training, validate_args=self.validate_args))
                if moments is None:  # normalization: none
                    continue
                bn = flow_bijectors.RunningBatchNorm(
                    moments.moving_mean, moments.moving_variance, momentum=self.momentum,
                    epsilon=self.epsilon, training=training, validate_args=self.validate_args,
                    name=f"{moments.name}_bn")
                batch_norms.append(bn)
                steps.append(bn)
            if inner is not None:
                steps.append(flow_bijectors.FactorOut(inner, scale.keep, self.validate_args,
                                                      name=f"scale{k}_factor_out"))
                steps.append(flow_bijectors.Squeeze(self.validate_args,
                                                    name=f"scale{k}_unsqueeze"))
            inner = steps
        assert inner is not None  # num_scales >= 1: the loop ran.
        return inner, batch_norms

    def bijector(self, training: bool = False) -> tfp.bijectors.Chain:
        """The `tfb.Bijector` latent z -> logit-space data l (inverse: l -> z), for use with
        TFP (`tfd.TransformedDistribution`, `tfb.Chain`)."""
        return flow_bijectors.chain(self.steps(training)[0], name="realnvp")

    def distribution(self, training: bool = False, labels: TensorLike | None = None
                     ) -> tfp.distributions.TransformedDistribution:
        """`tfd.TransformedDistribution`: the latent (standard normal, or class-conditional
        given `labels`, batch [B]) pushed to logit space."""
        labels = self._checked_labels(labels)
        prior = self._prior() if labels is None else self.class_prior.distribution(labels)
        return tfd.TransformedDistribution(prior, self.bijector(training))

    def _prior(self):
        return tfd.Sample(tfd.Normal(0.0, 1.0), self.image_shape)

    def _checked_labels(self, labels, batch=None):
        """int32 class ids [B] of a conditional model (required); None for an unconditional
        one (which refuses labels)."""
        return conditional.checked_labels(self.num_classes, labels, batch)

    # -- Densities -------------------------------------------------------------------------

    def log_prob(self, l: TensorLike, labels: TensorLike | None = None,
                 training: bool = False) -> tf.Tensor:
        """log density of logit-space data l [B, H, W, C] (nats per example); of l given
        class ids `labels` [B] for a conditional model."""
        l = tf.convert_to_tensor(l, tf.float32)
        return self._log_pl(l, training, self._checked_labels(labels, l.shape[0]))[0]

    def _log_pl(self, l, training, labels=None):
        """(log p(l) = log N(z; 0, I) + log|det dz/dl|, or log N(z; mu_y, sigma_y) with
        checked `labels`; the batch-norm bijectors used)."""
        steps, batch_norms = self.steps(training)
        z, log_det = flow_bijectors.to_latent(steps, l)
        if labels is None:
            return self._prior().log_prob(z) + log_det, batch_norms
        return self.class_prior.log_prob(z, labels) + log_det, batch_norms

    def _log_px(self, images, training, noise, seed=None, labels=None):
        x = preprocessing.dequantize(images, noise, seed)
        l, log_det = preprocessing.to_logit(x, self.alpha)
        log_pl, batch_norms = self._log_pl(l, training, labels)
        return log_pl + log_det, batch_norms

    def bits_per_dim(self, images: TensorLike, noise: str = "uniform",
                     seed: TensorLike | None = None, training: bool = False,
                     labels: TensorLike | None = None) -> tf.Tensor:
        """Bits/dim of uint8 images [B, H, W, C], per example (uniform dequantisation noise by
        default; noise="mid" is deterministic); of p(x | y) given `labels` for a conditional
        model."""
        images = tf.convert_to_tensor(images)
        labels = self._checked_labels(labels, images.shape[0])
        log_px, _ = self._log_px(images, training, noise, seed, labels)
        return preprocessing.bits_per_dim(log_px, self.num_dims)

    def bits_per_dim_per_class(self, images: np.ndarray, labels: ArrayLike,
                               noise: str = "mid", seed: int | None = None,
                               batch_size: int = 256) -> np.ndarray:
        """Mean bits/dim per class, float64 [num_classes] (NaN for a class without images), of
        uint8 `images` with class ids `labels`, in batches (inference mode). A conditional model
        scores p(x | y); an unconditional one scores p(x) and `labels` only group the images
        (into max(labels) + 1 classes). `noise="uniform"` with `seed` draws batch i's noise
        from the stateless seed (seed, i)."""
        images, labels = np.asarray(images), np.asarray(labels).astype(np.int64).reshape(-1)
        if len(images) != len(labels):
            raise _checks.invalid_value("labels", f"{len(images)} class ids, one per image",
                                        f"{len(labels)} class ids")
        batch_size = _checks.check_int("batch_size", batch_size, 1)
        num_classes = self.num_classes or int(labels.max(initial=-1)) + 1
        values = []
        for i, start in enumerate(range(0, len(images), batch_size)):
            batch = slice(start, start + batch_size)
            batch_seed = None if seed is None or noise == "mid" else [int(seed), i]
            values.append(self.bits_per_dim(
                images[batch], noise, batch_seed,
                labels=None if self.num_classes is None else labels[batch]).numpy())
        values = np.concatenate(values) if values else np.zeros(0)
        return conditional.per_class_mean(values, labels, num_classes)

    def call(self, images: TensorLike, labels: TensorLike | None = None,
             training: bool = False) -> tf.Tensor:
        """Bits/dim per example with mid-bin dequantisation (deterministic)."""
        return self.bits_per_dim(images, noise="mid", training=training, labels=labels)

    # -- Latents and samples (inference mode: running statistics) --------------------------

    def encode(self, images: TensorLike, noise: str = "mid",
               seed: TensorLike | None = None) -> tf.Tensor:
        """uint8 images -> latent z (same shape, float32); mid-bin dequantisation by default."""
        x = preprocessing.dequantize(tf.convert_to_tensor(images), noise, seed)
        l, _ = preprocessing.to_logit(x, self.alpha)
        return flow_bijectors.to_latent(self.steps(training=False)[0], l)[0]

    def decode(self, z: TensorLike) -> tf.Tensor:
        """latent z -> uint8 images."""
        l = flow_bijectors.to_data(self.steps(training=False)[0],
                                   tf.convert_to_tensor(z, tf.float32))
        return preprocessing.to_uint8(preprocessing.from_logit(l, self.alpha))

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None,
               labels: ArrayLike | None = None) -> tf.Tensor:
        """n uint8 images from z ~ N(0, temperature^2 I); for a conditional model, of classes
        `labels` (a class id per sample, or one id for all n) from
        z = mu_y + temperature * sigma_y * eps."""
        n = _checks.check_int("n", n, 1)
        temperature = _checks.check_range("temperature", temperature, 0.0,
                                          low_inclusive=False)
        if labels is not None and np.ndim(labels) == 0:
            labels = np.full([n], labels)
        labels = self._checked_labels(labels, n)
        if labels is not None:
            return self.decode(self.class_prior.sample(labels, temperature, seed))
        shape = (n,) + self.image_shape
        if seed is None:
            z = tf.random.normal(shape)
        else:
            z = tf.random.stateless_normal(shape, [int(seed), 0])
        return self.decode(temperature * z)

    # -- Training --------------------------------------------------------------------------

    def weight_norm_scales(self) -> list[keras.Variable]:
        return [w for w in self.trainable_weights if w.path.endswith("/g")]

    def build(self, input_shape: tuple[int | None, ...] | None = None) -> None:
        if not self._built_flow:
            self._built_flow = True
            labels = None if self.num_classes is None else tf.zeros([2], tf.int32)
            self.bits_per_dim(tf.zeros((2,) + self.image_shape, tf.uint8), noise="mid",
                              labels=labels)
        super().build(input_shape)

    def _unpack(self, data):
        """(images, checked labels or None, sample_weight or None) of a batch: images, or
        Keras' (x, y, sample_weight) with y the class ids (ignored by an unconditional model,
        as `fit` on (images, labels) always did)."""
        if not isinstance(data, (tuple, list)):
            data = (data,)
        images = data[0]
        labels = data[1] if len(data) > 1 and self.num_classes is not None else None
        weights = data[2] if len(data) > 2 else None
        return images, self._checked_labels(labels, images.shape[0]), weights

    # No AutoGraph: the step has no data-dependent Python control flow, and converting TFP's
    # bijector code made tracing take ten times longer.
    @tf.autograph.experimental.do_not_convert
    def train_step(self, data: TensorLike) -> dict[str, tf.Tensor]:
        images, labels, example_weights = self._unpack(data)
        seed = tf.cast(self.noise_seed.next(), tf.int32)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            log_px, batch_norms = self._log_px(images, True, "uniform", seed, labels)
            bpd = preprocessing.bits_per_dim(log_px, self.num_dims)
            penalty = self.l2 * tf.add_n([tf.reduce_sum(tf.square(g))
                                          for g in self.weight_norm_scales()])
            # Class weights scale each example's bits/dim (Keras' sum-over-batch-size mean,
            # so weights of mean 1 keep the loss's scale); the metric below stays unweighted.
            weighted = bpd if example_weights is None else bpd * tf.reshape(
                tf.cast(example_weights, bpd.dtype), [-1])
            loss = tf.reduce_mean(weighted) + penalty
            loss = tf.debugging.check_numerics(
                loss, "RealNVP: the training loss (bits/dim) is NaN or infinite; training "
                "stopped before writing a checkpoint of this step")
            scaled = loss / replicas  # The optimizer sums gradients over replicas.
        weights = self.trainable_weights
        grads = tape.gradient(scaled, weights)
        tf.debugging.check_numerics(tf.linalg.global_norm(grads),
                                    "RealNVP: the gradient norm is NaN or infinite")
        self.optimizer.apply_gradients(zip(grads, weights))
        for bn in batch_norms:
            bn.apply_updates()
        self.bpd_tracker.update_state(bpd)
        return {"loss": loss, "bits_per_dim": self.bpd_tracker.result()}

    @tf.autograph.experimental.do_not_convert
    def test_step(self, data: TensorLike) -> dict[str, tf.Tensor]:
        images, labels, _ = self._unpack(data)  # Evaluation is unweighted.
        seed = tf.cast(self.noise_seed.next(), tf.int32)
        log_px, _ = self._log_px(images, False, "uniform", seed, labels)
        bpd = preprocessing.bits_per_dim(log_px, self.num_dims)
        self.bpd_tracker.update_state(bpd)
        return {"bits_per_dim": self.bpd_tracker.result()}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.bpd_tracker]

    def get_config(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "num_scales": self.num_scales,
                "num_blocks": self.num_blocks, "num_filters": self.num_filters,
                "momentum": self.momentum, "network_momentum": self.network_momentum,
                "epsilon": self.epsilon, "alpha": self.alpha,
                "l2": self.l2, "seed": self.seed, "validate_args": self.validate_args,
                "num_classes": self.num_classes, "skip_connections": self.skip_connections,
                "concat_relu": self.concat_relu, "width_doubling": self.width_doubling,
                "scale_parameterisation": self.scale_parameterisation,
                "normalization": self.normalization, "weight_init": self.weight_init,
                "name": self.name}
