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
