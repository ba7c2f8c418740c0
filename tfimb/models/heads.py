"""Classification heads."""

from __future__ import annotations

from typing import Any, Union

import keras
from keras import ops

from tfimb import _checks
from tfimb._checks import TensorLike

#: A Keras initializer: its name, its serialized config or an instance.
InitializerLike = Union[str, dict[str, Any], keras.initializers.Initializer]


@keras.saving.register_keras_serializable(package="tfimb")
class CosineClassifier(keras.layers.Layer):
    """Cosine-similarity classifier: `z_c = <x / |x|, w_c / |w_c|>`, in [-1, 1].

    The normalised linear layer that LDAM (Cao et al., NeurIPS 2019) trains with
    `tfimb.LDAM(counts, max_margin, scale)`: the loss multiplies these logits by `scale`, so the
    layer itself has no scale and no bias. At inference `argmax(z)` is the prediction.

    Args:
        units: number of classes.
        epsilon: added under the square roots of the norms (keeps zero vectors finite).
        kernel_initializer: initializer of the `(features, units)` weight matrix.

    Example:

    >>> layer = tfimb.models.CosineClassifier(10)
    >>> cosines = layer(np.ones((2, 64), "float32"))
    >>> tuple(cosines.shape), bool(np.all(np.abs(cosines) <= 1.0))
    ((2, 10), True)
    """

    def __init__(self, units: int, epsilon: float = 1e-12,
                 kernel_initializer: InitializerLike = "glorot_uniform",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = _checks.check_int("units", units, 1)
        self.epsilon = _checks.check_range("epsilon", epsilon, 0.0, low_inclusive=False)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer=self.kernel_initializer,
            name="kernel")

    def call(self, inputs: TensorLike) -> TensorLike:
        # Normalise in float32 at least: bfloat16 norms would round the cosines to 3 digits.
        dtype = "float32" if self.compute_dtype in ("float16", "bfloat16") else self.compute_dtype
        x = ops.cast(inputs, dtype)
        w = ops.cast(self.kernel, dtype)
        x = x * ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + self.epsilon)
        w = w * ops.rsqrt(ops.sum(ops.square(w), axis=0, keepdims=True) + self.epsilon)
        return ops.matmul(x, w)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "epsilon": self.epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="tfimb")
class ClassScales(keras.layers.Layer):
    """Learnable weight scaling (LWS): `z'_c = f_c * z_c`, one learned scale per class.

    The second stage of Kang et al. (ICLR 2020, "Decoupling representation and classifier for
    long-tailed recognition"): the trained classifier's logits z (weights and bias frozen) are
    rescaled class by class, the scales learned with class-balanced sampling. They start at 1,
    so the layer starts as the identity.

    Args:
        units: number of classes.

    Example:

    >>> layer = tfimb.models.ClassScales(3)
    >>> layer(np.array([[1.0, -2.0, 0.5]], "float32")).numpy().tolist()
    [[1.0, -2.0, 0.5]]
    """

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = _checks.check_int("units", units, 1)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.scales = self.add_weight(shape=(self.units,), initializer="ones", name="scales")

    def call(self, inputs: TensorLike) -> TensorLike:
        return inputs * ops.cast(self.scales, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tfimb")
class NearestClassMean(keras.layers.Layer):
    """Nearest class mean (NCM) on normalised features: `z_c = -||g(x) - mu_c||^2`.

    Kang et al.'s NCM classifier: g(x) = (x - m) / ||x - m||, m the mean training feature, and
    mu_c the mean of g over the training images of class c (`adapt`-like: set by `set_means`).
    The logit is the negative squared distance, so `argmax` is the nearest mean.

    Args:
        units: number of classes.
        epsilon: added under the square root of the norm.

    Example:

    >>> layer = tfimb.models.NearestClassMean(2)
    >>> layer.set_means(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.zeros(2))
    >>> int(np.argmax(layer(np.array([[-3.0, 1.0]], "float32"))))
    1
    """

    def __init__(self, units: int, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = _checks.check_int("units", units, 1)
        self.epsilon = _checks.check_range("epsilon", epsilon, 0.0, low_inclusive=False)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        features = input_shape[-1]
        self.means = self.add_weight(shape=(self.units, features), initializer="zeros",
                                     name="means", trainable=False)
        self.center = self.add_weight(shape=(features,), initializer="zeros", name="center",
                                      trainable=False)

    def normalize(self, inputs: TensorLike) -> TensorLike:
        """g(x): centred by the mean training feature, then L2-normalised (float32)."""
        x = ops.cast(inputs, "float32") - self.center
        return x * ops.rsqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + self.epsilon)

    def set_means(self, means: TensorLike, center: TensorLike) -> None:
        """mu_c (`(units, features)`, of normalised features) and m (`(features,)`)."""
        if not self.built:
            self.build((None, int(ops.shape(means)[-1])))
        self.means.assign(ops.cast(means, "float32"))
        self.center.assign(ops.cast(center, "float32"))

    def call(self, inputs: TensorLike) -> TensorLike:
        g = self.normalize(inputs)
        distances = (ops.sum(ops.square(g), axis=-1, keepdims=True)
                     - 2.0 * ops.matmul(g, ops.transpose(self.means))
                     + ops.sum(ops.square(self.means), axis=-1)[None, :])
        return -distances

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "epsilon": self.epsilon}
