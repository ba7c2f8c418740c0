"""A 2-D RealNVP on two moons, drawn like the paper's Figure 1.

Points (x1, x2) are events of shape [1, 1, 2], so the image bijectors apply unchanged:
alternating channel-mask couplings (x2 given x1, then x1 given x2) whose s/t networks are MLPs.
`tfimb flow two-moons` trains it and writes `two_moons.png`: data x ~ p_X, its latent f(x),
latent samples z ~ p_Z, their images g(z), and the learned density p_X.
"""

from __future__ import annotations

import pathlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfimb import _checks
from tfimb._checks import PathLike, TensorLike
from tfimb.flows import bijectors as flow_bijectors

tfb = tfp.bijectors
tfd = tfp.distributions
EVENT = (1, 1, 2)


def make_two_moons(n: int, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """n standardised two-moons points [n, 2] (scikit-learn's generator)."""
    from sklearn.datasets import make_moons

    points, _ = make_moons(n, noise=noise, random_state=seed)
    points = (points - points.mean(0)) / points.std(0)
    return points.astype(np.float32)


class MLPNetwork(keras.layers.Layer):
    """s and t for a [1, 1, C] event: two hidden ReLU layers; s = scale * tanh, scale from 0."""

    def __init__(self, channels: int, hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.hidden = [keras.layers.Dense(hidden, activation="relu") for _ in range(2)]
        self.out = keras.layers.Dense(2 * channels)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.scale = self.add_weight(shape=(self.channels,), name="scale", initializer="zeros")

    def call(self, x: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        h = x
        for layer in self.hidden:
            h = layer(h)
        raw = self.out(h)
        return self.scale * tf.tanh(raw[..., :self.channels]), raw[..., self.channels:]


class TwoMoonsFlow(keras.Model):
    """`num_couplings` alternating channel couplings between R^2 and a standard normal."""

    def __init__(self, num_couplings: int = 8, hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_couplings = _checks.check_int("num_couplings", num_couplings, 2)
        # A channel coupling's network reads the kept coordinate and scales the other one.
        self.networks = [MLPNetwork(1, hidden, name=f"coupling{i}") for i in range(num_couplings)]
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.log_prob(np.zeros((1, 2), np.float32))  # Build the networks.

    def steps(self) -> list[flow_bijectors.AffineCoupling]:
        """The couplings in data -> latent order."""
        return [flow_bijectors.AffineCoupling(net, "channel", i % 2)
                for i, net in enumerate(self.networks)]

    def bijector(self) -> tfp.bijectors.Chain:
        """latent -> data (forward); data -> latent (inverse)."""
        return flow_bijectors.chain(self.steps(), name="two_moons")

    def distribution(self) -> tfp.distributions.TransformedDistribution:
        return tfd.TransformedDistribution(self._prior(), self.bijector())

    def _prior(self):
        return tfd.Sample(tfd.Normal(0.0, 1.0), EVENT)

    def log_prob(self, points: TensorLike) -> tf.Tensor:
        points = tf.reshape(tf.convert_to_tensor(points, tf.float32), (-1,) + EVENT)
        z, log_det = flow_bijectors.to_latent(self.steps(), points)
        return self._prior().log_prob(z) + log_det

    def encode(self, points: TensorLike) -> tf.Tensor:
        points = tf.reshape(tf.convert_to_tensor(points, tf.float32), (-1,) + EVENT)
        return tf.reshape(flow_bijectors.to_latent(self.steps(), points)[0], (-1, 2))

    def decode(self, z: TensorLike) -> tf.Tensor:
        z = tf.reshape(tf.convert_to_tensor(z, tf.float32), (-1,) + EVENT)
        return tf.reshape(flow_bijectors.to_data(self.steps(), z), (-1, 2))

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data: TensorLike) -> dict[str, tf.Tensor]:
        points = data[0] if isinstance(data, (tuple, list)) else data
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(self.log_prob(points))
        grads = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker]


def train(num_points: int = 4096, epochs: int = 60, batch_size: int = 256,
          learning_rate: float = 1e-3, seed: int = 0,
          verbose: int | str = 0) -> tuple[TwoMoonsFlow, np.ndarray]:
    """A TwoMoonsFlow fitted by maximum likelihood; returns (model, data)."""
    keras.utils.set_random_seed(seed)
    data = make_two_moons(num_points, seed=seed)
    model = TwoMoonsFlow()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate))
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(num_points, seed=seed)
    model.fit(ds.batch(batch_size, drop_remainder=True), epochs=epochs, verbose=verbose)
    return model, data


def density_grid(model: TwoMoonsFlow, limit: float = 3.0,
                 size: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xs, ys, density [size, size]) of the learned p_X on [-limit, limit]^2."""
    xs = np.linspace(-limit, limit, size, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    density = np.exp(model.log_prob(grid).numpy()).reshape(size, size)
    return xs, xs, density


def plot_figure(model: TwoMoonsFlow, data: np.ndarray, path: PathLike,
                seed: int = 0) -> pathlib.Path:
    """The paper's Figure 1 for two moons, plus the learned density, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z_data = model.encode(data).numpy()
    z = np.random.default_rng(seed).normal(size=data.shape).astype(np.float32)
    x_samples = model.decode(z).numpy()
    xs, ys, density = density_grid(model)
    fig, axes = plt.subplots(1, 5, figsize=(21, 4.3))
    color = data[:, 0]  # Colour by position in data space, to follow points across the map.
    panels = [(data, "Inference: x ~ p_X", color), (z_data, "Inference: z = f(x)", color),
              (z, "Generation: z ~ p_Z", "tab:green"), (x_samples, "Generation: x = g(z)",
                                                         "tab:green")]
    for ax, (points, title, c) in zip(axes, panels):
        style = {"c": c, "cmap": "coolwarm"} if isinstance(c, np.ndarray) else {"color": c}
        ax.scatter(points[:, 0], points[:, 1], s=2, **style)
        ax.set(title=title, xlim=(-3.5, 3.5), ylim=(-3.5, 3.5), aspect="equal")
    axes[4].imshow(density, origin="lower", extent=(xs[0], xs[-1], ys[0], ys[-1]),
                   cmap="magma")
    axes[4].set(title="Learned density p_X", aspect="equal")
    fig.tight_layout()
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
