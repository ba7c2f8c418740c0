import math

import numpy as np
import pytest
import tensorflow as tf

import keras

from tfimb import flows
from tfimb.flows import preprocessing


class TinyNetwork(keras.layers.Layer):
    """s = tanh, t = affine of one random convolution: a coupling far from the identity."""

    def __init__(self, channels, seed=0):
        super().__init__()
        init = keras.initializers.RandomNormal(stddev=0.4, seed=seed)
        self.channels = channels
        self.conv = keras.layers.Conv2D(2 * channels, 3, padding="same", kernel_initializer=init,
                                        bias_initializer=init)

    def call(self, x, training=False):
        raw = self.conv(x)
        return tf.tanh(raw[..., :self.channels]), raw[..., self.channels:]


def _fresh(x):
    return tf.identity(tf.convert_to_tensor(x, tf.float32))


def _brute_force_ildj(fn, x):
    """log|det d fn(x) / dx| per example, from the full Jacobian."""
    shape = x.shape[1:]
    flat = tf.reshape(_fresh(x), [x.shape[0], -1])
    with tf.GradientTape() as tape:
        tape.watch(flat)
        out = fn(tf.reshape(flat, [-1, *shape]))
        out = tf.reshape(out, [x.shape[0], -1])
    jacobian = tape.batch_jacobian(out, flat)
    return np.linalg.slogdet(jacobian.numpy().astype(np.float64))[1]


def _check_bijector(bijector, x, atol=2e-4):
    """Round trips on fresh copies, fldj = -ildj, ildj against the brute-force Jacobian."""
    z = bijector.inverse(_fresh(x))
    np.testing.assert_allclose(bijector.forward(_fresh(z)).numpy(), x, atol=atol)
    np.testing.assert_allclose(bijector.inverse(_fresh(bijector.forward(_fresh(z)))).numpy(),
                               z.numpy(), atol=atol)
    ildj = bijector.inverse_log_det_jacobian(_fresh(x), event_ndims=3).numpy()
    fldj = bijector.forward_log_det_jacobian(_fresh(z), event_ndims=3).numpy()
    np.testing.assert_allclose(fldj, -ildj, rtol=1e-4, atol=atol)
    brute = _brute_force_ildj(lambda v: bijector.inverse(v), x)
    np.testing.assert_allclose(np.broadcast_to(ildj, brute.shape), brute, rtol=1e-4,
                               atol=2e-3)
    return z


# ---------------------------------------------------------------------------------------------
# Masks and squeeze.


def test_masks_are_the_papers_and_complementary():
    board = flows.checkerboard_mask(3, 4, 0).numpy()[..., 0]
    rows, cols = np.indices((3, 4))
    np.testing.assert_array_equal(board, (rows + cols) % 2)  # 1 where row + column is odd
    np.testing.assert_array_equal(board + flows.checkerboard_mask(3, 4, 1).numpy()[..., 0], 1)
    np.testing.assert_array_equal(flows.channel_mask(6, 0).numpy().ravel(), [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(flows.channel_mask(6, 1).numpy().ravel(), [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="Invalid value for argument `mask`"):
        flows.AffineCoupling(TinyNetwork(2), mask="stripes")
    with pytest.raises(ValueError, match="Invalid value for argument `parity`"):
        flows.AffineCoupling(TinyNetwork(2), parity=2)


def test_squeeze_uses_the_authors_channel_order_and_shapes(rng):
    x = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    squeeze = flows.Squeeze()
    y = squeeze.forward(_fresh(x)).numpy()
    assert y.shape == (2, 2, 3, 12)
    for i, j, c, dy, dx in [(0, 0, 0, 0, 0), (1, 2, 2, 1, 0), (0, 1, 1, 1, 1), (1, 0, 2, 0, 1)]:
        assert y[1, i, j, 4 * c + 2 * dy + dx] == x[1, 2 * i + dy, 2 * j + dx, c]
    np.testing.assert_array_equal(squeeze.inverse(_fresh(y)).numpy(), x)
    assert squeeze.forward_event_shape([4, 6, 3]) == [2, 3, 12]
    assert squeeze.inverse_event_shape([2, 3, 12]) == [4, 6, 3]
    np.testing.assert_array_equal(squeeze.forward_event_shape_tensor([4, 6, 3]), [2, 3, 12])
    np.testing.assert_array_equal(squeeze.inverse_event_shape_tensor([2, 3, 12]), [4, 6, 3])
    assert float(squeeze.forward_log_det_jacobian(_fresh(x), event_ndims=3)) == 0.0
    # Extra batch dimensions.
    batched = squeeze.forward(_fresh(x[None])).numpy()
    np.testing.assert_array_equal(batched[0], y)
    with pytest.raises(ValueError, match="even height and width"):
        squeeze.forward(tf.zeros([1, 3, 4, 1]))


# ---------------------------------------------------------------------------------------------
# Coupling.


@pytest.mark.parametrize("mask, parity", [("checkerboard", 0), ("checkerboard", 1),
                                          ("channel", 0), ("channel", 1)])
def test_affine_coupling_matches_the_formula_and_its_jacobian(rng, mask, parity):
    x = rng.normal(size=(3, 4, 4, 4)).astype(np.float32)
    # A channel coupling's network reads the kept half and returns s, t for the other half.
    network = TinyNetwork(4 if mask == "checkerboard" else 2, seed=parity)
    coupling = flows.AffineCoupling(network, mask=mask, parity=parity)
    z = _check_bijector(coupling, x)
    # Independent formula: y = b x + (1 - b)(x exp(s(bx)) + t(bx)); log-det = sum (1-b) s.
    if mask == "checkerboard":
        b = flows.checkerboard_mask(4, 4, parity).numpy()
        s, t = (v.numpy() for v in network(tf.constant(b * x)))
    else:  # s and t of the kept half, placed on the changed half (zeros on the kept one).
        b = flows.channel_mask(4, parity).numpy()
        kept = x[..., :2] if parity == 0 else x[..., 2:]
        zeros = np.zeros_like(kept)
        s, t = ((np.concatenate([zeros, v.numpy()] if parity == 0 else [v.numpy(), zeros], -1))
                for v in network(tf.constant(kept)))
    np.testing.assert_allclose(z.numpy(), b * x + (1 - b) * (x * np.exp(s) + t), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(coupling.inverse_log_det_jacobian(_fresh(x), event_ndims=3),
                               ((1 - b) * s).sum(axis=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    # The same numbers inside tf.function.
    graph_ildj = tf.function(lambda v: coupling.inverse_log_det_jacobian(v, event_ndims=3))
    np.testing.assert_allclose(graph_ildj(_fresh(x)).numpy(),
                               ((1 - b) * s).sum(axis=(1, 2, 3)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Batch norm.


def _moments(channels, rng):
    mean = tf.Variable(rng.normal(size=channels).astype(np.float32))
    variance = tf.Variable(rng.uniform(0.5, 2.0, size=channels).astype(np.float32))
    return mean, variance


def test_running_batch_norm_inference_mode_is_exact(rng):
    mean, variance = _moments(3, rng)
    bn = flows.RunningBatchNorm(mean, variance, epsilon=1e-4)
    x = rng.normal(size=(2, 2, 3, 3)).astype(np.float32)
    z = _check_bijector(bn, x)
    np.testing.assert_allclose(z.numpy(), (x - mean.numpy()) / np.sqrt(variance.numpy() + 1e-4),
                               rtol=1e-5, atol=1e-5)
    assert bn.pending_updates == []  # Inference never changes the running statistics.


def test_running_batch_norm_training_mode_log_det_and_update(rng):
    mean, variance = _moments(2, rng)
    old_mean, old_var = mean.numpy().copy(), variance.numpy().copy()
    bn = flows.RunningBatchNorm(mean, variance, momentum=0.8, epsilon=1e-3, training=True)
    x = rng.normal(2.0, 3.0, size=(5, 4, 4, 2)).astype(np.float32)
    used_mean = 0.8 * old_mean + 0.2 * x.mean(axis=(0, 1, 2))
    used_var = 0.8 * old_var + 0.2 * x.var(axis=(0, 1, 2))
    z = bn.inverse(_fresh(x)).numpy()
    np.testing.assert_allclose(z, (x - used_mean) / np.sqrt(used_var + 1e-3), rtol=1e-4,
                               atol=1e-4)
    ildj = bn.inverse_log_det_jacobian(_fresh(x), event_ndims=3).numpy()
    np.testing.assert_allclose(ildj, -0.5 * 16 * np.log(used_var + 1e-3).sum(), rtol=1e-5)
    np.testing.assert_array_equal(mean.numpy(), old_mean)  # Not before the step applies it.
    bn.apply_updates()
    np.testing.assert_allclose(mean.numpy(), used_mean, rtol=1e-5)
    np.testing.assert_allclose(variance.numpy(), used_var, rtol=1e-5)
    with pytest.raises(ValueError, match="Invalid value for argument `momentum`"):
        flows.RunningBatchNorm(mean, variance, momentum=1.0)


# ---------------------------------------------------------------------------------------------
# The whole flow.


def _move_from_identity(model, seed=0):
    """Every coupling, batch norm and class prior of a built RealNVP away from its identity
    start (the tests of exactness need couplings that do something)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("/scale"):
            w.assign(rng.normal(0, 0.5, size=w.shape).astype(np.float32))
        elif w.path.endswith("moving_mean") or w.path.endswith("class_prior/mean"):
            w.assign(rng.normal(0, 0.3, size=w.shape).astype(np.float32))
        elif w.path.endswith("moving_variance"):
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype(np.float32))
        elif w.path.endswith("class_prior/log_scale"):
            w.assign(rng.normal(0, 0.3, size=w.shape).astype(np.float32))
    return model


def _random_flow(image_shape, num_scales=2, seed=0):
    model = flows.RealNVP(image_shape, num_scales=num_scales, num_blocks=1, num_filters=4,
                          seed=seed)
    model.build()
    return _move_from_identity(model, seed)


@pytest.mark.parametrize("image_shape, num_scales", [((4, 4, 1), 2), ((4, 4, 3), 2),
                                                     ((8, 4, 1), 3)])
def test_realnvp_bijector_is_exact_in_inference_mode(rng, image_shape, num_scales):
    model = _random_flow(image_shape, num_scales)
    x = rng.normal(size=(2,) + image_shape).astype(np.float32)
    _check_bijector(model.bijector(training=False), x, atol=5e-4)
    # log_prob = N(z) + ildj, eagerly and inside tf.function.
    z = model.bijector().inverse(_fresh(x)).numpy()
    ildj = model.bijector().inverse_log_det_jacobian(_fresh(x), event_ndims=3).numpy()
    expected = -0.5 * (z ** 2).sum(axis=(1, 2, 3)) - 0.5 * z[0].size * math.log(2 * math.pi)
    np.testing.assert_allclose(model.log_prob(x).numpy(), expected + ildj, rtol=1e-5)
    np.testing.assert_allclose(tf.function(model.log_prob)(tf.constant(x)).numpy(),
                               expected + ildj, rtol=1e-5)


def _random_flow_with(image_shape, seed=0, **kwargs):
    model = flows.RealNVP(image_shape, num_scales=2, num_blocks=1, num_filters=4, **kwargs)
    model.build()
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if w.path.endswith("/scale"):
            w.assign(rng.normal(0, 0.5, size=w.shape).astype(np.float32))
    return model


def test_realnvp_training_mode_log_det_against_the_jacobian(rng):
    # Training mode: the coupling networks normalise with batch statistics, which keeps each
    # coupling triangular, so its log-det is still the s-sum; the batch-norm bijectors' formula
    # (checked above) treats their statistics as constants. With momentum -> 1 the statistics
    # barely depend on the batch, and the per-example Jacobian must match the training log-det.
    # (A batch of one: batch_jacobian would add other examples' dependence on this one.)
    model = _random_flow_with((4, 4, 1), momentum=0.999999)
    x = rng.normal(size=(1, 4, 4, 1)).astype(np.float32)
    ildj = model.bijector(training=True).inverse_log_det_jacobian(_fresh(x), event_ndims=3)
    brute = _brute_force_ildj(lambda v: model.bijector(training=True).inverse(v), x)
    np.testing.assert_allclose(ildj.numpy(), brute, rtol=1e-4, atol=2e-3)
    inference = model.bijector(training=False).inverse_log_det_jacobian(_fresh(x),
                                                                        event_ndims=3)
    assert not np.allclose(ildj.numpy(), inference.numpy())  # The training path differs.


def test_realnvp_encode_decode_round_trip_sample_and_errors(rng):
    model = _random_flow((4, 4, 3))
    images = rng.integers(0, 256, size=(3, 4, 4, 3)).astype(np.uint8)
    z = model.encode(images)
    assert z.shape == (3, 4, 4, 3) and z.dtype == tf.float32
    np.testing.assert_array_equal(model.decode(z).numpy(), images)
    samples = model.sample(5, temperature=0.7, seed=3)
    assert samples.shape == (5, 4, 4, 3) and samples.dtype == tf.uint8
    np.testing.assert_array_equal(samples.numpy(), model.sample(5, temperature=0.7,
                                                                seed=3).numpy())
    with pytest.raises(ValueError, match="Invalid value for argument `temperature`"):
        model.sample(2, temperature=0.0)
    with pytest.raises(ValueError, match="Invalid value for argument `image_shape`"):
        flows.RealNVP((6, 4, 1), num_scales=3)
    with pytest.raises(ValueError, match="Invalid value for argument `num_scales`"):
        flows.RealNVP((4, 4, 1), num_scales=0)


def test_bits_per_dim_of_an_identity_flow_by_hand():
    model = flows.RealNVP((4, 4, 1), num_scales=2, num_blocks=1, num_filters=2, epsilon=1e-4)
    model.build()
    for w in model.weights:  # s = 0 (scale 0), t = 0 (output conv 0), batch norm = identity.
        if w.path.endswith("out/g") or w.path.endswith("out/bias"):
            w.assign(np.zeros(w.shape, np.float32))
        elif w.path.endswith("moving_variance"):
            w.assign(np.full(w.shape, 1 - 1e-4, np.float32))
    images = np.arange(32, dtype=np.uint8).reshape(2, 4, 4, 1) * 8
    x = (images.astype(np.float64) + 0.5) / 256
    p = 0.05 + 0.9 * x
    logit = np.log(p) - np.log1p(-p)
    log_px = (-0.5 * logit ** 2 - 0.5 * math.log(2 * math.pi)
              + math.log(0.9) - np.log(p) - np.log1p(-p)).sum(axis=(1, 2, 3))
    expected = (-log_px + 16 * math.log(256)) / (16 * math.log(2))
    np.testing.assert_allclose(model.bits_per_dim(images, noise="mid").numpy(), expected,
                               rtol=1e-5)
    # The reference's sanity figure: 7,330 nats per CIFAR image (after the D log 256 shift) is
    # 3.44 bits/dim; log p(x) of the continuous x is then D log 256 - 7330.
    log_px = 3072 * math.log(256) - 7330.0
    np.testing.assert_allclose(preprocessing.bits_per_dim(log_px, 3072), 3.44, atol=0.005)


def test_checkpoint_restore_gives_identical_log_probabilities(tmp_path, rng):
    model = _random_flow((4, 4, 1), seed=1)
    x = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
    before = model.log_prob(x).numpy()
    model.save_weights(tmp_path / "flow.weights.h5")
    other = _random_flow((4, 4, 1), seed=2)
    assert not np.allclose(other.log_prob(x).numpy(), before)
    other.load_weights(tmp_path / "flow.weights.h5")
    np.testing.assert_array_equal(other.log_prob(x).numpy(), before)


def test_two_moons_density_integrates_to_one_and_maps_both_ways(tmp_path):
    from tfimb.flows import two_moons

    model, data = two_moons.train(num_points=512, epochs=3, batch_size=128)
    rng = np.random.default_rng(0)
    for w in model.weights:  # Make every coupling a real (non-volume-preserving) one.
        if w.path.endswith("/scale"):
            w.assign(rng.normal(0, 0.5, size=w.shape).astype(np.float32))
    _, _, density = two_moons.density_grid(model, limit=8.0, size=600)
    cell = (16.0 / 599) ** 2
    assert abs(density.sum() * cell - 1.0) < 0.01
    z = model.encode(data[:64])
    np.testing.assert_allclose(model.decode(z).numpy(), data[:64], atol=1e-4)
    path = two_moons.plot_figure(model, data, tmp_path / "moons.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# The explicit walk (no bijector cache) and validate_args.


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
def test_walk_equals_the_tfp_chain_and_the_brute_force_jacobian(rng, compiled):
    model = _random_flow((4, 4, 3), num_scales=2)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    steps, _ = model.steps(training=False)
    walk = tf.function(flows.to_latent) if compiled else flows.to_latent
    z, log_det = walk(steps, tf.constant(x))
    chain = model.bijector(training=False)
    np.testing.assert_allclose(z.numpy(), chain.inverse(_fresh(x)).numpy(), atol=1e-5)
    np.testing.assert_allclose(
        log_det.numpy(), chain.inverse_log_det_jacobian(_fresh(x), event_ndims=3).numpy(),
        rtol=1e-5)
    brute = _brute_force_ildj(lambda v: flows.to_latent(steps, v)[0], x)
    np.testing.assert_allclose(log_det.numpy(), brute, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(flows.to_data(steps, z).numpy(), x, atol=5e-4)


def test_layout_is_the_papers_and_each_network_runs_once_per_density():
    model = _random_flow((8, 8, 1), num_scales=2)
    steps, batch_norms = model.steps()
    kinds = [type(s).__name__ for s in steps]
    assert kinds == (["AffineCoupling", "RunningBatchNorm"] * 3 + ["Unsqueeze"]
                     + ["AffineCoupling", "RunningBatchNorm"] * 3 + ["FactorOut", "Squeeze"])
    inner = steps[-2].steps
    assert [type(s).__name__ for s in inner] == ["AffineCoupling", "RunningBatchNorm"] * 4
    assert len(batch_norms) == 10
    calls = []
    for scale in model._layout:
        for _, _, network, _ in scale.couplings:
            original = network.call

            def counted(x, training=False, original=original, network=network):
                calls.append(network.name)
                return original(x, training=training)

            network.call = counted
    model.log_prob(tf.zeros((1, 8, 8, 1)))
    assert len(calls) == 10 and len(set(calls)) == 10  # Each coupling's network once.


def test_results_follow_the_weights_with_no_stale_cache(rng):
    model = _random_flow((4, 4, 1))
    z = tf.constant(rng.normal(size=(2, 4, 4, 1)).astype(np.float32))
    x = tf.constant(rng.normal(size=(2, 4, 4, 1)).astype(np.float32))
    before_decode, before_log_p = model.decode(z).numpy(), model.log_prob(x).numpy()
    for w in model.weights:
        if w.path.endswith("/scale"):
            w.assign(w + 0.3)
    assert not np.array_equal(model.decode(z).numpy(), before_decode)  # The same z object.
    assert not np.allclose(model.log_prob(x).numpy(), before_log_p)


def test_validate_args_asserts_what_the_math_needs(rng):
    class NaNNetwork(keras.layers.Layer):
        def call(self, x, training=False):
            return x * np.nan, x

    x = tf.constant(rng.normal(size=(1, 4, 4, 2)).astype(np.float32))
    lenient = flows.AffineCoupling(NaNNetwork(), "channel", 0)
    assert np.isnan(lenient.to_latent(x)[0].numpy()).any()
    strict = flows.AffineCoupling(NaNNetwork(), "channel", 0, validate_args=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="scale s is not finite"):
        strict.to_latent(x)
    mean, variance = tf.Variable(tf.zeros(2)), tf.Variable(-tf.ones(2))
    bn = flows.RunningBatchNorm(mean, variance, validate_args=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="variance"):
        bn.to_latent(x)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1])])
    def squeeze(v):
        return flows.Squeeze(validate_args=True).forward(v)

    assert squeeze(tf.zeros((1, 4, 4, 1))).shape == (1, 2, 2, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="odd height or width"):
        squeeze(tf.zeros((1, 3, 4, 1)))
    model = flows.RealNVP((4, 4, 1), num_scales=2, num_blocks=1, num_filters=4,
                          validate_args=True)
    assert np.all(np.isfinite(model.bits_per_dim(np.zeros((2, 4, 4, 1), np.uint8)).numpy()))
    assert flows.RealNVP.from_config(model.get_config()).validate_args is True
