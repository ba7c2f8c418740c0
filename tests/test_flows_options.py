"""RealNVP's optional variants (chrischute/real-nvp's): skip connections, the input batch norm
with concatenated ReLU, width doubling of channel couplings, the scale's start, and no
batch-norm bijector between couplings."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras

from test_flows import _brute_force_ildj, _check_bijector, _fresh, _move_from_identity
from tfimb import config, flows
from tfimb.config import flow as flow_config
from tfimb.experiments import density
from tfimb.flows import realnvp

OPTIONS = {
    "skip_connections": {"skip_connections": True},
    "concat_relu": {"concat_relu": True},
    "width_doubling": {"width_doubling": True},
    "unit_tanh": {"scale_parameterisation": "unit_tanh"},
    "no_batch_norm": {"normalization": "none"},
    "all": {"skip_connections": True, "concat_relu": True, "width_doubling": True,
            "scale_parameterisation": "unit_tanh", "normalization": "none"},
}


def _flow(image_shape=(4, 4, 3), num_blocks=1, num_filters=4, seed=0, **options):
    model = flows.RealNVP(image_shape, num_scales=2, num_blocks=num_blocks,
                          num_filters=num_filters, **options)
    model.build()
    return _move_from_identity(model, seed)


# Every option inside the coupling networks leaves the coupling's algebra alone; all of them at
# once and the skip sum alone are checked against the brute-force Jacobian (each case costs
# about 10 s on 2 cores: the suite's budget).
EXACTNESS_CASES = ("skip_connections", "all")


@pytest.mark.parametrize("options", [OPTIONS[k] for k in EXACTNESS_CASES], ids=EXACTNESS_CASES)
def test_options_keep_the_flow_exact_and_invertible(rng, options):
    model = _flow(**options)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    # Round trips both ways, fldj = -ildj, ildj against the brute-force Jacobian.
    _check_bijector(model.bijector(training=False), x, atol=5e-4)
    # log p(l) = log N(z) + log|det dz/dl| with the brute-force Jacobian.
    steps, _ = model.steps(training=False)
    z = flows.to_latent(steps, tf.constant(x))[0].numpy()
    brute = _brute_force_ildj(lambda v: flows.to_latent(steps, v)[0], x)
    normal = -0.5 * (z ** 2).sum(axis=(1, 2, 3)) - 0.5 * z[0].size * math.log(2 * math.pi)
    np.testing.assert_allclose(model.log_prob(x).numpy(), normal + brute, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(flows.to_data(steps, tf.constant(z)).numpy(), x, atol=5e-4)
    # The option changes the numbers (it is not silently ignored); unit_tanh only changes the
    # scale's start, which _flow overwrites.
    if options != {"scale_parameterisation": "unit_tanh"}:
        assert not np.allclose(_default_log_prob(x), model.log_prob(x).numpy())


_DEFAULT = []


def _default_log_prob(x):
    if not _DEFAULT:
        _DEFAULT.append(_flow())
    return _DEFAULT[0].log_prob(x).numpy()


def _network_parameters(c, f, blocks, skip=False, concat=False):
    """Trainable parameters of one s/t network reading c channels with f feature maps."""
    conv = lambda k, cin, cout: k * k * cin * cout + 2 * cout  # v, g, bias
    bn = 2 * f  # gamma, beta
    # Input batch norm and concatenated ReLU: 2c more, and the stem reads 2c maps.
    total = (2 * c + conv(3, 2 * c, f)) if concat else conv(3, c, f)
    total += blocks * (2 * bn + 2 * conv(3, f, f) - f)  # The first convolution has no bias.
    # Output batch norm, convolution (1x1 reading the skip sum), scale.
    total += bn + conv(1 if skip else 3, f, 2 * c) + c
    if skip:
        total += (blocks + 1) * conv(1, f, f)
    return total


def _flow_parameters(c, f, blocks, num_scales=2, skip=False, concat=False, doubling=False):
    total = 0
    for k in range(num_scales):
        maps = f * 2 ** k
        if k == num_scales - 1:
            total += 4 * _network_parameters(c, maps, blocks, skip, concat)
        else:
            total += 3 * _network_parameters(c, maps, blocks, skip, concat)
            # Channel couplings: the network reads and scales half of the 4c squeezed channels.
            total += 3 * _network_parameters(2 * c, (2 if doubling else 1) * maps, blocks,
                                             skip, concat)
        c *= 2
    return total


@pytest.mark.parametrize("options", [{}] + list(OPTIONS.values()),
                         ids=["default"] + list(OPTIONS))
def test_parameter_counts_are_as_each_option_says(options):
    model = flows.RealNVP((4, 4, 3), num_scales=2, num_blocks=2, num_filters=4, **options)
    model.build()
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    expected = _flow_parameters(3, 4, 2, skip=options.get("skip_connections", False),
                                concat=options.get("concat_relu", False),
                                doubling=options.get("width_doubling", False))
    assert count == expected
    default = _flow_parameters(3, 4, 2)
    if options in ({}, OPTIONS["unit_tanh"], OPTIONS["no_batch_norm"]):
        assert count == default
    else:  # (The skips' 1x1 output layer has fewer weights than the 3x3 one.)
        assert count != default


def test_network_wiring_shapes_and_scale_start():
    model = flows.RealNVP((4, 4, 1), num_scales=2, num_blocks=2, num_filters=4,
                          skip_connections=True, concat_relu=True, width_doubling=True,
                          scale_parameterisation="unit_tanh", normalization="none")
    model.build()
    shapes = {w.path.split("/", 1)[1]: tuple(w.shape) for w in model.weights}
    # Width doubling: only channel couplings (of the non-final scale 0) get 2 x 4 maps.
    assert shapes["scale0_coupling0_checkerboard/stem/v"][-1] == 4
    assert shapes["scale0_coupling3_channel/stem/v"][-1] == 8
    assert shapes["scale1_coupling0_checkerboard/stem/v"][-1] == 8
    # Input batch norm and concatenated ReLU: the stem reads twice the input's channels; the
    # blocks read the maps themselves.
    # (A channel coupling's network reads half of the 4 squeezed channels.)
    assert shapes["scale0_coupling3_channel/in_bn/gamma"] == (2,)
    assert shapes["scale0_coupling3_channel/stem/v"] == (3, 3, 4, 8)
    assert shapes["scale1_coupling0_checkerboard/stem/v"] == (3, 3, 4, 8)
    assert shapes["scale0_coupling3_channel/block1_conv1/v"] == (3, 3, 8, 8)
    # Skip connections: a 1x1 convolution of the stem and of each block, a 1x1 output.
    for name in ("stem_skip", "block0_skip", "block1_skip"):
        assert shapes[f"scale0_coupling3_channel/{name}/v"] == (1, 1, 8, 8)
    assert shapes["scale0_coupling3_channel/out/v"] == (1, 1, 8, 4)
    assert "scale0_coupling3_channel/block0_conv1/bias" not in shapes
    # normalization "none": no running statistics at all.
    assert not any("moments" in w.path for w in model.weights)
    scales = [w for w in model.weights if w.path.endswith("/scale")]
    assert len(scales) == 10 and all(np.all(w.numpy() == 1.0) for w in scales)
    default = flows.RealNVP((4, 4, 1), num_scales=2, num_blocks=2, num_filters=4)
    default.build()
    scales = [w for w in default.weights if w.path.endswith("/scale")]
    assert all(np.all(w.numpy() == 0.0) for w in scales)
    assert not any("skip" in w.path for w in default.weights)


def test_peer_network_wiring_input_layer_and_summed_skips(rng):
    """concat_relu + skip_connections is the peer's s/t network: input batch norm (times the
    checkerboard gain 2), concat(x, -x), ReLU, stem; 1x1 skips of the stem and every block
    summed; output batch norm, ReLU, 1x1 convolution."""
    network = realnvp.CouplingNetwork(2, 2, 4, skip_connections=True, concat_relu=True,
                                      scale_init=1.0, input_gain=2.0)
    x = tf.constant(rng.normal(size=(3, 4, 4, 2)).astype(np.float32))
    for training in (False, True):
        s, t = network(x, training=training)
        # The input batch norm by hand: batch statistics when training, the running ones
        # (mean 0, variance 1 at the start) in inference.
        mean = np.mean(x.numpy(), axis=(0, 1, 2)) if training else 0.0
        var = np.var(x.numpy(), axis=(0, 1, 2)) if training else 1.0
        v = 2.0 * (x.numpy() - mean) / np.sqrt(var + network.in_bn.epsilon)
        h = network.stem(np.maximum(np.concatenate([v, -v], axis=-1), 0.0))
        total = network.skips[0](h)
        for i, (bn1, conv1, bn2, conv2) in enumerate(network.blocks):
            r = conv1(tf.nn.relu(bn1(h, training=training)))
            h = h + conv2(tf.nn.relu(bn2(r, training=training)))
            total = total + network.skips[i + 1](h)
        raw = network.out(tf.nn.relu(network.out_bn(total, training=training))).numpy()
        np.testing.assert_allclose(s.numpy(), np.tanh(raw[..., :2]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(t.numpy(), raw[..., 2:], rtol=1e-4, atol=1e-5)


def test_defaults_are_the_old_model_and_options_round_trip_config(tmp_path, rng):
    keras.utils.set_random_seed(1)
    implicit = flows.RealNVP((4, 4, 1), num_scales=2, num_blocks=1, num_filters=4)
    implicit.build()
    keras.utils.set_random_seed(1)
    explicit = flows.RealNVP((4, 4, 1), num_scales=2, num_blocks=1, num_filters=4,
                             skip_connections=False, concat_relu=False, width_doubling=False,
                             scale_parameterisation="zero_tanh", normalization="batch_norm")
    explicit.build()
    assert ([w.path.split("/", 1)[1] for w in implicit.weights]
            == [w.path.split("/", 1)[1] for w in explicit.weights])
    for a, b in zip(implicit.weights, explicit.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    model = _flow(**OPTIONS["all"])
    cfg = model.get_config()
    assert {k: cfg[k] for k in OPTIONS["all"]} == OPTIONS["all"]
    other = flows.RealNVP.from_config(cfg)
    other.build()
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    model.save_weights(tmp_path / "flow.weights.h5")
    other.load_weights(tmp_path / "flow.weights.h5")
    np.testing.assert_array_equal(other.log_prob(x).numpy(), model.log_prob(x).numpy())


@pytest.mark.parametrize("kwargs, match", [
    ({"skip_connections": 1}, "argument `skip_connections`. Expected true or false"),
    ({"concat_relu": "yes"}, "argument `concat_relu`"),
    ({"width_doubling": None}, "argument `width_doubling`"),
    ({"scale_parameterisation": "exp"}, r"argument `scale_parameterisation`. Expected one of "
                                        r"\['zero_tanh', 'unit_tanh'\]"),
    ({"scale_parameterisation": ["unit_tanh"]}, "argument `scale_parameterisation`"),
    ({"network_momentum": 1.0}, r"argument `network_momentum`"),
    ({"weight_init": "glorot"}, r"argument `weight_init`. Expected one of \['unit', "
                                r"'pytorch'\]. Received: weight_init='glorot'"),
    ({"normalization": "actnorm"}, r"argument `normalization`. Expected one of "
                                   r"\['batch_norm', 'none'\]. Received: normalization='actnorm'"),
])
def test_realnvp_refuses_bad_option_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flows.RealNVP((4, 4, 1), **kwargs)


def test_config_keys_build_the_model_and_refuse_bad_values():
    assert flow_config.SCALE_PARAMETERISATIONS == tuple(realnvp.SCALE_PARAMETERISATIONS)
    assert flow_config.NORMALIZATIONS == realnvp.NORMALIZATIONS
    cfg = config.resolve_flow({}, ["model.num_scales=2", "model.num_blocks=1",
                                   "model.num_filters=4", "model.skip_connections=true",
                                   "model.concat_relu=true", "model.width_doubling=true",
                                   "model.scale_parameterisation=unit_tanh",
                                   "model.normalization=none"])
    model = density.build_model(cfg, (4, 4, 1))
    assert (model.skip_connections, model.concat_relu, model.width_doubling,
            model.scale_parameterisation, model.normalization) == (
        True, True, True, "unit_tanh", "none")
    default = config.resolve_flow({})
    assert (default.model.skip_connections, default.model.concat_relu,
            default.model.width_doubling, default.model.scale_parameterisation,
            default.model.normalization) == (False, False, False, "zero_tanh", "batch_norm")
    with pytest.raises(config.ConfigError, match=r"^Invalid value for key "
                       r"`model.normalization`. Expected one of \['batch_norm', 'none'\]. "
                       r"Received: model.normalization='actnorm'$"):
        config.resolve_flow({}, ["model.normalization=actnorm"])
    with pytest.raises(config.ConfigError, match=r"^Invalid value for key "
                       r"`model.network_momentum`. Expected 0 <= network_momentum < 1. "
                       r"Received: model.network_momentum=1.5$"):
        config.resolve_flow({}, ["model.network_momentum=1.5"])
    # The networks' batch norms take it (0.99: Keras' default).
    model = density.build_model(config.resolve_flow({}, [
        "model.num_scales=1", "model.num_blocks=1", "model.num_filters=4",
        "model.network_momentum=0.9"]), (4, 4, 1))
    norms = [layer for layer in model._flatten_layers() if "BatchNormalization" in
             type(layer).__name__]
    assert norms and all(layer.momentum == 0.9 for layer in norms)
    with pytest.raises(config.ConfigError, match=r"^Invalid value for key "
                       r"`model.scale_parameterisation`. Expected one of \['zero_tanh', "
                       r"'unit_tanh'\]. Received: model.scale_parameterisation='tanh'$"):
        config.resolve_flow({}, ["model.scale_parameterisation=tanh"])
    for key in ("skip_connections", "concat_relu", "width_doubling"):
        with pytest.raises(config.ConfigError,
                           match=f"^Invalid value for key `model.{key}`. Expected bool"):
            config.resolve_flow({"model": {key: "on"}})
        bad = config.FlowConfig()
        setattr(bad.model, key, 1)
        with pytest.raises(config.ConfigError,
                           match=f"^Invalid value for key `model.{key}`. Expected true or "
                                 f"false. Received: model.{key}=1$"):
            bad.validate()


@pytest.mark.parametrize("kernel_size, channels", [(3, 8), (1, 16)])
def test_weight_init_pytorch_is_weight_norm_of_a_fresh_torch_conv(kernel_size, channels):
    """init="pytorch": v and bias ~ U(-b, b), b = 1/sqrt(fan_in), g = ||v|| (so w = v at the
    start, about 1/sqrt(3) per output channel); "unit": unit-norm w, zero bias."""
    keras.utils.set_random_seed(0)
    conv = realnvp.WeightNormConv2D(64, kernel_size, init="pytorch")
    conv.build((None, 4, 4, channels))
    v, g, bias = conv.v.numpy(), conv.g.numpy(), conv.bias.numpy()
    bound = 1.0 / math.sqrt(kernel_size * kernel_size * channels)
    assert np.abs(v).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(bias).max() > 0.5 * bound  # Drawn, not zero.
    norms = np.sqrt((v.reshape(-1, 64) ** 2).sum(axis=0))
    np.testing.assert_allclose(g, norms, rtol=1e-6)
    assert abs(norms.mean() - 1 / math.sqrt(3)) < 0.05
    unit = realnvp.WeightNormConv2D(64, kernel_size)
    unit.build((None, 4, 4, channels))
    assert np.all(unit.g.numpy() == 1.0) and np.all(unit.bias.numpy() == 0.0)
    x = tf.random.normal([2, 4, 4, channels])
    # The layer computes with w = g v / ||v|| (= v here).
    expected = tf.nn.conv2d(x, v, 1, "SAME") + bias
    np.testing.assert_allclose(conv(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    model = density.build_model(config.resolve_flow({}, [
        "model.num_scales=1", "model.num_blocks=1", "model.num_filters=4",
        "model.weight_init=pytorch"]), (4, 4, 1))
    assert model.weight_init == "pytorch"
    assert all(layer.init == "pytorch" for layer in model._flatten_layers()
               if isinstance(layer, realnvp.WeightNormConv2D))
    with pytest.raises(config.ConfigError, match=r"^Invalid value for key `model.weight_init`"):
        config.resolve_flow({}, ["model.weight_init=he"])
