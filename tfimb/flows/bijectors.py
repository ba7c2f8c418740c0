"""RealNVP's bijectors as `tfb.Bijector` subclasses on image events [H, W, C].

Direction (TFP's convention, as in `tfd.TransformedDistribution`): **forward maps the latent
side to the data side** (generation, the paper's g = f^-1) and **inverse maps data to latent**
(the paper's f, the direction in which the paper writes its formulas). Log-determinants are
implemented once, on the data side (`_inverse_log_det_jacobian`, i.e. log|det df/dx|), so that
`log_prob` uses the statistics of the data it is given (TFP 0.25 evaluates a forward log-det
on the latent side, where batch statistics would be the wrong ones).
`Squeeze` is the exception: its forward squeezes [H, W, C] -> [H/2, W/2, 4C]; inside RealNVP it
is used inverted.

TFP bijectors do not track Keras variables: the networks and the batch-norm statistics belong
to a Keras model (`tfimb.flows.RealNVP`), which passes them in.

Every bijector here also has `to_latent(y) -> (z, log|det dz/dy|)` and `to_data(z)`: one
evaluation of each network per step, no cache. `to_latent(steps, y)` / `to_data(steps, z)` walk
a list of them; `RealNVP` computes its densities, latents and samples that way, so nothing
depends on TFP's bijector cache (which is keyed by tensor identity and shared between instances
of equal parameters, and could return a result computed before the weights changed). The TFP
methods (`forward`, `inverse`, `inverse_log_det_jacobian`) compute from the same two methods,
and `tfb.Chain` composes them for users. (Through TFP, `log_prob` calls `inverse` and the
log-det separately, so each network runs twice and a training-mode batch norm records its
statistics twice, with equal values: use the walk where speed matters.) Under
`validate_args=True` each bijector asserts what its math needs (finite scales and shifts,
positive variances, even image sizes).

The five bijectors and the walk stay in one module, a little over the project's 400 lines:
they share the direction convention and the to_latent/to_data protocol above, and are read
together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfimb import _checks

if TYPE_CHECKING:
    import keras

tfb = tfp.bijectors

MASKS = ("checkerboard", "channel")


def checkerboard_mask(height: int, width: int, parity: int = 0,
                      dtype: tf.DType = tf.float32) -> tf.Tensor:
    """[H, W, 1]: 1 where (row + column + parity) is odd, so parity 0 and 1 are complements."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return tf.constant(((rows + cols + parity) % 2)[..., None], dtype)


def channel_mask(channels: int, parity: int = 0, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """[1, 1, C]: 1 on the first half of the channels (parity 0) or the second half (parity 1)."""
    if channels < 2:
        raise _checks.invalid_value("channels", "at least 2 channels for a channel mask",
                                    channels)
    first = np.arange(channels) < channels // 2
    return tf.constant((first if parity == 0 else ~first)[None, None, :], dtype)


def _dims(x):
    """(H, W, C) of x: Python ints where the static shape knows them, else scalar tensors."""
    dynamic = tf.shape(x)
    return tuple(x.shape[i] if x.shape[i] is not None else dynamic[i] for i in (-3, -2, -1))


def _event_sum(x):
    return tf.reduce_sum(x, axis=[-3, -2, -1])


class AffineCoupling(tfp.bijectors.Bijector):
    """Masked affine coupling (Dinh et al. 2017, eqs. 8-9).

    With a binary mask b (1 = passed through unchanged and conditioned on), data x and latent y:

        inverse (data -> latent):  y = b * x + (1 - b) * (x * exp(s(b * x)) + t(b * x))
        forward (latent -> data):  x = b * y + (1 - b) * (y - t(b * y)) * exp(-s(b * y))
        log|det dy/dx| = sum over the (1 - b) units of s(b * x)

    `mask`: "checkerboard" (spatial, 1 where row + column + parity is odd) or "channel" (first
    half of the channels for parity 0, second half for parity 1). Under a checkerboard mask
    `network(b * x, training=...)` returns `(s, t)`, each shaped like x; under a channel mask the
    network reads only the kept half of the channels and returns s and t for the other half (as
    the authors' code: no inputs that are always zero, no outputs that are thrown away). s should
    be bounded (RealNVP uses scale * tanh, with a zero-initialised scale so each coupling starts
    as the identity).
    `training` is passed to the network (its batch normalisation).
    """

    def __init__(self, network: Callable[..., tuple[tf.Tensor, tf.Tensor]],
                 mask: str = "checkerboard", parity: int = 0, training: bool = False,
                 validate_args: bool = False, name: str | None = None) -> None:
        parameters = dict(locals())
        if mask not in MASKS:
            raise _checks.invalid_value("mask", f"one of {MASKS}", mask)
        if parity not in (0, 1):
            raise _checks.invalid_value("parity", "0 or 1", parity)
        self._network, self._mask, self._parity = network, mask, parity
        self._training = bool(training)
        super().__init__(forward_min_event_ndims=3, validate_args=validate_args,
                         parameters=parameters,
                         name=name or f"affine_coupling_{mask}_{parity}")

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    @property
    def mask_type(self) -> str:
        return self._mask

    @property
    def parity(self) -> int:
        return self._parity

    def mask(self, x: tf.Tensor) -> tf.Tensor:
        """The mask b broadcastable against x (its dtype)."""
        height, width, channels = x.shape[-3:]
        if self._mask == "checkerboard":
            return checkerboard_mask(height, width, self._parity, x.dtype)
        return channel_mask(channels, self._parity, x.dtype)

    def _scale_and_shift(self, x):
        """(b, (1 - b) * s(b * x), (1 - b) * t(b * x)): b * x is the same on both sides."""
        b = self.mask(x)
        if self._mask == "checkerboard":
            s, t = self._network(b * x, training=self._training)
        else:
            half = x.shape[-1] // 2
            kept = x[..., :half] if self._parity == 0 else x[..., half:]
            s, t = self._network(kept, training=self._training)
            # Zeros on the kept half, which (1 - b) below zeroes anyway.
            pad = [[0, 0]] * (len(x.shape) - 1) + [[half, 0] if self._parity == 0 else [0, half]]
            s, t = tf.pad(s, pad), tf.pad(t, pad)
        s, t = tf.cast(s, x.dtype), tf.cast(t, x.dtype)
        if self.validate_args:
            s = tf.debugging.assert_all_finite(s, f"{self.name}: the scale s is not finite")
            t = tf.debugging.assert_all_finite(t, f"{self.name}: the shift t is not finite")
        return b, (1.0 - b) * s, (1.0 - b) * t

    def to_latent(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Data -> latent with log|det dz/dy|, one network evaluation."""
        b, s, t = self._scale_and_shift(y)
        return b * y + (1.0 - b) * (y * tf.exp(s) + t), _event_sum(s)

    def to_data(self, z: tf.Tensor) -> tf.Tensor:
        """Latent -> data."""
        b, s, t = self._scale_and_shift(z)
        return b * z + (1.0 - b) * (z - t) * tf.exp(-s)

    def _inverse(self, y):  # data -> latent (the paper's direction)
        return self.to_latent(y)[0]

    def _forward(self, x):  # latent -> data
        return self.to_data(x)

    def _inverse_log_det_jacobian(self, y):
        _, s, _ = self._scale_and_shift(y)
        return _event_sum(s)


class Squeeze(tfp.bijectors.Bijector):
    """Space-to-depth in the authors' channel order: forward [H, W, C] -> [H/2, W/2, 4C].

    Pixel (2i + dy, 2j + dx) channel c goes to pixel (i, j) channel `4c + 2dy + dx` (not
    `tf.nn.space_to_depth`'s `(2dy + dx) C + c`), so that a channel mask after the squeeze
    conditions on the same units as in the authors' code. Volume preserving: log-det 0.
    """

    def __init__(self, validate_args: bool = False, name: str = "squeeze") -> None:
        parameters = dict(locals())
        super().__init__(forward_min_event_ndims=3, inverse_min_event_ndims=3,
                         is_constant_jacobian=True, validate_args=validate_args,
                         parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    def to_latent(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Data -> latent: unsqueeze (this bijector's inverse), log-det 0."""
        return self._inverse(y), tf.zeros([], y.dtype)

    def to_data(self, z: tf.Tensor) -> tf.Tensor:
        return self._forward(z)

    def _forward(self, x):
        batch = tf.shape(x)[:-3]
        h, w, c = _dims(x)
        if (isinstance(h, int) and h % 2) or (isinstance(w, int) and w % 2):
            raise _checks.invalid_value("x", "an even height and width to squeeze",
                                        tuple(x.shape))
        if self.validate_args and not (isinstance(h, int) and isinstance(w, int)):
            with tf.control_dependencies([tf.debugging.assert_equal(
                    tf.stack([h % 2, w % 2]), 0, message=f"{self.name}: odd height or width")]):
                x = tf.identity(x)  # Runs after the assertion (static sizes: checked above).
        rank = len(x.shape)
        x = tf.reshape(x, tf.concat([batch, [h // 2, 2, w // 2, 2, c]], 0))
        n = rank - 3  # Batch dimensions.
        # [.., i, dy, j, dx, c] -> [.., i, j, c, dy, dx]
        x = tf.transpose(x, list(range(n)) + [n, n + 2, n + 4, n + 1, n + 3])
        return tf.reshape(x, tf.concat([batch, [h // 2, w // 2, 4 * c]], 0))

    def _inverse(self, y):
        batch = tf.shape(y)[:-3]
        h, w, c4 = _dims(y)
        if isinstance(c4, int) and c4 % 4:
            raise _checks.invalid_value("y", "a channel count divisible by 4 to unsqueeze",
                                        tuple(y.shape))
        c, n = c4 // 4, len(y.shape) - 3
        y = tf.reshape(y, tf.concat([batch, [h, w, c, 2, 2]], 0))
        # [.., i, j, c, dy, dx] -> [.., i, dy, j, dx, c]
        y = tf.transpose(y, list(range(n)) + [n, n + 3, n + 1, n + 4, n + 2])
        return tf.reshape(y, tf.concat([batch, [2 * h, 2 * w, c]], 0))

    def _forward_log_det_jacobian(self, x):
        return tf.zeros([], x.dtype)

    def _forward_event_shape(self, input_shape):
        h, w, c = tf.TensorShape(input_shape)[-3:]
        half = lambda d: None if d is None else d // 2  # noqa: E731
        return tf.TensorShape([half(h), half(w), None if c is None else 4 * c])

    def _inverse_event_shape(self, output_shape):
        h, w, c = tf.TensorShape(output_shape)[-3:]
        double = lambda d: None if d is None else 2 * d  # noqa: E731
        return tf.TensorShape([double(h), double(w), None if c is None else c // 4])

    def _forward_event_shape_tensor(self, input_shape):
        return tf.stack([input_shape[-3] // 2, input_shape[-2] // 2, 4 * input_shape[-1]])

    def _inverse_event_shape_tensor(self, output_shape):
        return tf.stack([2 * output_shape[-3], 2 * output_shape[-2], output_shape[-1] // 4])


class Unsqueeze(tfp.bijectors.Bijector):
    """The inverse of `Squeeze` as a bijector of its own: forward [H, W, C] -> [2H, 2W, C/4]
    (latent -> data), inverse squeezes (data -> latent). RealNVP squeezes in the data ->
    latent direction at the start of each coarser scale's channel couplings."""

    def __init__(self, validate_args: bool = False, name: str = "unsqueeze") -> None:
        parameters = dict(locals())
        self._squeeze = Squeeze(validate_args=validate_args)
        super().__init__(forward_min_event_ndims=3, inverse_min_event_ndims=3,
                         is_constant_jacobian=True, validate_args=validate_args,
                         parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    def to_latent(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Data -> latent: squeeze, log-det 0."""
        return self._squeeze.to_data(y), tf.zeros([], y.dtype)

    def to_data(self, z: tf.Tensor) -> tf.Tensor:
        return self._squeeze.to_latent(z)[0]

    def _forward(self, x):
        return self.to_data(x)

    def _inverse(self, y):
        return self.to_latent(y)[0]

    def _forward_log_det_jacobian(self, x):
        return tf.zeros([], x.dtype)

    def _forward_event_shape(self, input_shape):
        return self._squeeze.inverse_event_shape(input_shape)

    def _inverse_event_shape(self, output_shape):
        return self._squeeze.forward_event_shape(output_shape)

    def _forward_event_shape_tensor(self, input_shape):
        return self._squeeze.inverse_event_shape_tensor(input_shape)

    def _inverse_event_shape_tensor(self, output_shape):
        return self._squeeze.forward_event_shape_tensor(output_shape)


class RunningBatchNorm(tfp.bijectors.Bijector):
    """Batch normalisation with running statistics (Dinh et al. 2017, appendix E).

        inverse (data -> latent):  y = (x - mu) / sqrt(var + epsilon)
        forward (latent -> data):  x = y * sqrt(var + epsilon) + mu
        log|det dy/dx| = -1/2 * H * W * sum_c log(var_c + epsilon)   (per example)

    Statistics are per channel over batch, height and width. In inference
    (`training=False`) mu and var are the running statistics. In training they are the running
    statistics updated with the current batch, `mu = momentum * mu_run + (1 - momentum) *
    mu_batch` (same for var), with gradients flowing only through the batch part; the values
    used are recorded in `pending_updates` and written to the running statistics by the model
    once per training step (`apply_updates`), after the loss has been computed, so that the
    inverse and its log-det of one step see the same statistics.

    `moving_mean` and `moving_variance` are variables of shape [C] owned by the caller (a Keras
    layer, so that they are checkpointed and mirrored).
    """

    def __init__(self, moving_mean: keras.Variable | tf.Variable,
                 moving_variance: keras.Variable | tf.Variable, momentum: float = 0.9,
                 epsilon: float = 1e-4, training: bool = False, validate_args: bool = False,
                 name: str = "running_batch_norm") -> None:
        parameters = dict(locals())
        self._momentum = _checks.check_range("momentum", momentum, 0.0, 1.0,
                                             high_inclusive=False)
        self._epsilon = _checks.check_range("epsilon", epsilon, 0.0, low_inclusive=False)
        self._mean, self._variance = moving_mean, moving_variance
        self._training = bool(training)
        self.pending_updates: list[tuple[tf.Tensor, tf.Tensor]] = []
        super().__init__(forward_min_event_ndims=3, validate_args=validate_args,
                         parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    def statistics(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(mu, var) used for data x: running, or (training) running updated with the batch."""
        mean = tf.cast(tf.convert_to_tensor(self._mean), x.dtype)
        variance = tf.cast(tf.convert_to_tensor(self._variance), x.dtype)
        if not self._training:
            return mean, variance
        axes = list(range(len(x.shape) - 1))
        batch_mean, batch_variance = tf.nn.moments(x, axes=axes)
        m = self._momentum
        return (m * tf.stop_gradient(mean) + (1.0 - m) * batch_mean,
                m * tf.stop_gradient(variance) + (1.0 - m) * batch_variance)

    def _checked(self, variance):
        """The variance, asserted finite and (plus epsilon) positive under validate_args."""
        if not self.validate_args:
            return variance
        variance = tf.debugging.assert_all_finite(
            variance, f"{self.name}: the variance is not finite")
        with tf.control_dependencies([tf.debugging.assert_positive(
                variance + self._epsilon, message=f"{self.name}: variance + epsilon <= 0")]):
            return tf.identity(variance)

    def _log_det(self, y, variance):
        height, width = y.shape[-3], y.shape[-2]
        return -0.5 * height * width * tf.reduce_sum(tf.math.log(variance + self._epsilon))

    def to_latent(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Data -> latent with log|det dz/dy|; in training records the statistics used (once)."""
        mean, variance = self.statistics(y)
        variance = self._checked(variance)
        if self._training:
            self.pending_updates.append((mean, variance))
        return (y - mean) * tf.math.rsqrt(variance + self._epsilon), self._log_det(y, variance)

    def to_data(self, z: tf.Tensor) -> tf.Tensor:
        mean, variance = self.statistics_for_forward(z)
        return z * tf.sqrt(self._checked(variance) + self._epsilon) + mean

    def _inverse(self, y):
        return self.to_latent(y)[0]

    def _forward(self, x):
        return self.to_data(x)

    def statistics_for_forward(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The forward (sampling) direction has no data batch: always the running statistics."""
        return (tf.cast(tf.convert_to_tensor(self._mean), x.dtype),
                tf.cast(tf.convert_to_tensor(self._variance), x.dtype))

    def _inverse_log_det_jacobian(self, y):
        _, variance = self.statistics(y)
        return self._log_det(y, self._checked(variance))

    def apply_updates(self) -> None:
        """Write the statistics recorded in training to the running variables; clear them."""
        for mean, variance in self.pending_updates:
            self._mean.assign(tf.stop_gradient(tf.cast(mean, self._mean.dtype)))
            self._variance.assign(tf.stop_gradient(tf.cast(variance, self._variance.dtype)))
        self.pending_updates = []


class FactorOut(tfp.bijectors.Bijector):
    """RealNVP's factoring out (Dinh et al. 2017, eq. 15): the inner `steps` transform the first
    `keep` channels; the other channels pass through unchanged (they leave for the latent at
    this scale). `steps` are bijectors of this module in data -> latent order.

        inverse (data -> latent):  z = concat(to_latent(steps, y[..., :keep]), y[..., keep:])
        log|det dz/dy| = that of the inner steps
    """

    def __init__(self, steps: Iterable[Step], keep: int, validate_args: bool = False,
                 name: str = "factor_out") -> None:
        parameters = dict(locals())
        self._steps, self._keep = list(steps), int(keep)
        super().__init__(forward_min_event_ndims=3, validate_args=validate_args,
                         parameters=parameters, name=name)

    @classmethod
    def _parameter_properties(cls, dtype):
        return dict()

    @property
    def steps(self) -> list[Step]:
        return list(self._steps)

    def to_latent(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        kept, log_det = to_latent(self._steps, y[..., :self._keep])
        return tf.concat([kept, y[..., self._keep:]], -1), log_det

    def to_data(self, z: tf.Tensor) -> tf.Tensor:
        return tf.concat([to_data(self._steps, z[..., :self._keep]), z[..., self._keep:]], -1)

    def _forward(self, x):
        return self.to_data(x)

    def _inverse(self, y):
        return self.to_latent(y)[0]

    def _inverse_log_det_jacobian(self, y):
        return self.to_latent(y)[1]


# A step of `to_latent` / `to_data` / `FactorOut`: a bijector of this module.
Step = Union[AffineCoupling, Squeeze, Unsqueeze, RunningBatchNorm, FactorOut]


def to_latent(steps: Iterable[Step], y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Data -> latent through `steps` (data -> latent order) and the summed log|det dz/dy|,
    each step evaluated once (no bijector cache involved)."""
    log_det = tf.zeros([], y.dtype)
    for step in steps:
        y, step_log_det = step.to_latent(y)
        log_det = log_det + step_log_det
    return y, log_det


def to_data(steps: Sequence[Step], z: tf.Tensor) -> tf.Tensor:
    """Latent -> data through `steps` (given in data -> latent order)."""
    for step in reversed(steps):
        z = step.to_data(z)
    return z


def chain(steps: Iterable[tfp.bijectors.Bijector], name: str = "chain") -> tfp.bijectors.Chain:
    """`steps` (data -> latent order) as one `tfb.Chain` (forward: latent -> data)."""
    return tfb.Chain(list(steps), name=name)
