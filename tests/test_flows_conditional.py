"""The class-conditional RealNVP (`RealNVP(num_classes=...)`, `tfimb.flows.conditional`), its
class weighting, config and run: tiny images and models, so the file runs in seconds."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

import keras

from test_flows import _brute_force_ildj, _fresh, _move_from_identity
from tfimb import config, flows
from tfimb.config import flow as flow_config
from tfimb.experiments import density
from tfimb.flows import conditional
from tfimb.runtime import rundir


def _flow(image_shape=(4, 4, 1), num_classes=None, seed=0, move=True, **kwargs):
    """A tiny RealNVP named "flow" (so weight paths match between models); with `move`, every
    coupling, batch norm and class prior away from its identity start."""
    model = flows.RealNVP(image_shape, num_scales=2, num_blocks=1, num_filters=4,
                          num_classes=num_classes, name="flow", **kwargs)
    model.build()
    return _move_from_identity(model, seed) if move else model


def _copy_shared_weights(source, target):
    by_path = {w.path: w for w in source.weights}
    for w in target.weights:
        if w.path in by_path:
            w.assign(by_path[w.path])


def _gaussian_log_prob(z, mean, log_scale):
    eps = (z - mean) * np.exp(-log_scale)
    return (-0.5 * eps ** 2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(axis=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# The density.


def test_conditional_log_prob_is_the_change_of_variables_with_a_brute_force_jacobian(rng):
    """log p(x | y) = log N(z; mu_y, sigma_y) + log|det dz/dx|, the log-det from the full
    Jacobian of the data -> latent map (the conditional prior shares the unconditional flow),
    eagerly and inside tf.function."""
    model = _flow((4, 4, 3), num_classes=3)
    x = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)
    labels = np.array([2, 0, 2])
    steps, _ = model.steps(training=False)
    z = flows.to_latent(steps, tf.constant(x))[0].numpy()
    brute = _brute_force_ildj(lambda v: flows.to_latent(steps, v)[0], x)
    mean = model.class_prior.mean.numpy()[labels]
    log_scale = model.class_prior.log_scale.numpy()[labels]
    expected = _gaussian_log_prob(z.astype(np.float64), mean, log_scale) + brute
    got = model.log_prob(tf.constant(x), tf.constant(labels)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-3)
    graph = tf.function(model.log_prob)(tf.constant(x), tf.constant(labels)).numpy()
    np.testing.assert_allclose(graph, expected, rtol=1e-4, atol=2e-3)
    # The class matters, and TFP's distribution agrees.
    other = model.log_prob(x, [1, 1, 1]).numpy()
    assert not np.allclose(other, got)
    tfp_log_prob = model.distribution(labels=labels).log_prob(_fresh(x)).numpy()
    np.testing.assert_allclose(tfp_log_prob, got, rtol=1e-5, atol=1e-3)
    # bits/dim is the same density through the preprocessing.
    images = rng.integers(0, 256, size=(3, 4, 4, 3)).astype(np.uint8)
    per_class = model.bits_per_dim_per_class(images, labels)
    bpd = model.bits_per_dim(images, noise="mid", labels=labels).numpy()
    np.testing.assert_allclose(per_class, [bpd[1], np.nan, bpd[[0, 2]].mean()], rtol=1e-6)


def test_a_zero_initialised_conditional_model_is_the_unconditional_one(rng):
    plain = _flow((4, 4, 1))
    cond = _flow((4, 4, 1), num_classes=4, move=False)
    _copy_shared_weights(plain, cond)
    assert [w.path for w in plain.weights] == [w.path for w in cond.weights
                                               if "class_prior" not in w.path]
    assert not any("class_prior" in w.path for w in plain.weights)
    assert plain.get_config()["num_classes"] is None and cond.get_config()["num_classes"] == 4
    x = rng.normal(size=(4, 4, 4, 1)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    np.testing.assert_allclose(cond.log_prob(x, labels).numpy(), plain.log_prob(x).numpy(),
                               rtol=1e-6)
    images = rng.integers(0, 256, size=(4, 4, 4, 1)).astype(np.uint8)
    np.testing.assert_allclose(cond.bits_per_dim(images, noise="mid", labels=labels).numpy(),
                               plain.bits_per_dim(images, noise="mid").numpy(), rtol=1e-6)
    # z = mu_y + T sigma_y eps with the same eps: the same samples.
    np.testing.assert_array_equal(cond.sample(4, 0.7, seed=5, labels=labels).numpy(),
                                  plain.sample(4, 0.7, seed=5).numpy())
    # A training step: the same loss (same noise seed, same batch statistics).
    for model in (plain, cond):
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    plain_logs = plain.train_step(tf.constant(images))
    cond_logs = cond.train_step((tf.constant(images), tf.constant(labels)))
    np.testing.assert_allclose(float(cond_logs["loss"]), float(plain_logs["loss"]), rtol=1e-6)
    # A class-conditional model round-trips its config.
    assert flows.RealNVP.from_config(cond.get_config()).num_classes == 4


def test_labels_are_required_by_a_conditional_model_and_refused_by_an_unconditional_one(rng):
    plain, cond = _flow(move=False), _flow(num_classes=3, move=False)
    images = np.zeros((2, 4, 4, 1), np.uint8)
    cases = [(lambda: cond.bits_per_dim(images), "is class-conditional (num_classes=3). "
                                                 "Received: labels=None"),
             (lambda: cond.log_prob(np.zeros((2, 4, 4, 1), np.float32)), "labels=None"),
             (lambda: cond.sample(2), "labels=None"),
             (lambda: cond.train_step(tf.constant(images)), "labels=None"),
             (lambda: cond.bits_per_dim(images, labels=[0, 3]), "0 <= id < num_classes=3"),
             (lambda: cond.bits_per_dim(images, labels=[0, 1, 2]), "Expected 2 class ids"),
             (lambda: cond.bits_per_dim(images, labels=[0.0, 1.0]), "integer class ids"),
             (lambda: cond.sample(3, labels=[0, 1]), "Expected 3 class ids"),
             (lambda: plain.bits_per_dim(images, labels=[0, 1]), "is unconditional"),
             (lambda: plain.log_prob(np.zeros((2, 4, 4, 1)), [0, 1]), "is unconditional"),
             (lambda: plain.sample(2, labels=[0, 1]), "is unconditional"),
             (lambda: flows.RealNVP((4, 4, 1), num_classes=0), "argument `num_classes`")]
    for call, needle in cases:
        with pytest.raises(ValueError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("Invalid value for argument `"), message
        assert needle in message and "\n" not in message, message
    # Keras' sparse labels [B, 1] are one id per example; fit's y of an unconditional model
    # is ignored, as it always was.
    assert cond.bits_per_dim(images, labels=np.array([[0], [2]])).shape == (2,)
    plain.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert np.isfinite(float(plain.train_step((tf.constant(images), tf.constant([0, 1])))
                             ["loss"]))


# ---------------------------------------------------------------------------------------------
# Sampling.


def test_class_samples_follow_the_class_means_and_the_temperature(rng):
    model = _flow((4, 4, 1), num_classes=3)
    prior = model.class_prior
    # z = mu_y + T sigma_y eps, eps the seed's standard normal.
    labels = tf.constant([0, 2, 1, 2])
    eps = tf.random.stateless_normal([4, 4, 4, 1], [7, 0]).numpy()
    z = prior.sample(labels, 0.6, seed=7).numpy()
    mean = prior.mean.numpy()[labels.numpy()]
    scale = np.exp(prior.log_scale.numpy()[labels.numpy()])
    np.testing.assert_allclose(z, mean + 0.6 * scale * eps, rtol=1e-5, atol=1e-6)
    samples = model.sample(4, 0.6, seed=7, labels=labels)
    assert samples.shape == (4, 4, 4, 1) and samples.dtype == tf.uint8
    np.testing.assert_array_equal(samples.numpy(), model.decode(z).numpy())
    # Temperature -> 0: each class's mean, decoded (a uint8 bin edge may move one level).
    cold = model.sample(3, 1e-6, seed=0, labels=[0, 1, 2]).numpy().astype(int)
    means = model.decode(prior.mean.numpy()).numpy().astype(int)
    assert np.abs(cold - means).max() <= 1
    # Distinct class means give distinct samples from the same noise; one id serves all n.
    for c in range(3):
        prior.mean.assign(tf.tensor_scatter_nd_update(
            prior.mean, [[c]], [np.full((4, 4, 1), 2.0 * c - 2.0, np.float32)]))
    by_class = [model.sample(4, 0.5, seed=1, labels=c).numpy() for c in range(3)]
    assert not np.array_equal(by_class[0], by_class[1])
    assert not np.array_equal(by_class[1], by_class[2])
    assert by_class[0].mean() < by_class[1].mean() < by_class[2].mean()
    grid = density.sample_per_class(model, per_class=2, temperature=0.5)
    assert grid.shape == (6, 4, 4, 1)


# ---------------------------------------------------------------------------------------------
# Class weighting.


def test_balanced_class_weights_average_one_over_the_training_set():
    counts = np.array([500, 500, 25, 500, 25, 0])
    w = conditional.class_weights(counts, "balanced")
    present = counts > 0
    n, classes = counts.sum(), present.sum()
    np.testing.assert_allclose(w[present], n / (classes * counts[present]))
    assert w[5] == 0.0  # No training image: never in a batch.
    np.testing.assert_allclose((w * counts).sum() / n, 1.0)
    np.testing.assert_allclose(w * counts, np.where(present, n / classes, 0.0))
    np.testing.assert_array_equal(conditional.class_weights(counts, "none"), np.ones(6))
    with pytest.raises(ValueError, match="Invalid value for argument `weighting`"):
        conditional.class_weights(counts, "effective")
    assert conditional.CLASS_WEIGHTINGS == flow_config.CLASS_WEIGHTINGS


@pytest.mark.parametrize("num_classes", [None, 3], ids=["unconditional", "conditional"])
def test_class_weights_scale_each_examples_bits_per_dim_in_the_loss(rng, num_classes):
    """loss = mean_i(w_{y_i} bpd_i) + l2 penalty; the reported bits/dim is the plain mean."""
    model = _flow((4, 4, 1), num_classes=num_classes, l2=1e-3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = tf.constant(rng.integers(0, 256, size=(6, 4, 4, 1)).astype(np.uint8))
    labels = tf.constant([0, 0, 1, 2, 2, 2])
    weights = conditional.class_weights(np.bincount(labels.numpy()), "balanced")
    example_weights = tf.constant(weights[labels.numpy()], tf.float32)
    # The step's noise seed, peeked (and put back) to compute its bits/dim independently.
    state = model.noise_seed.state.numpy().copy()
    seed = tf.cast(model.noise_seed.next(), tf.int32)
    model.noise_seed.state.assign(state)
    bpd = model.bits_per_dim(images, "uniform", seed, training=True,
                             labels=labels if num_classes else None).numpy()
    penalty = 1e-3 * sum(float(tf.reduce_sum(tf.square(g))) for g in model.weight_norm_scales())
    logs = model.train_step((images, labels, example_weights))
    expected = (weights[labels.numpy()] * bpd).mean() + penalty
    np.testing.assert_allclose(float(logs["loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(logs["bits_per_dim"]), bpd.mean(), rtol=1e-5)
    assert abs(expected - (bpd.mean() + penalty)) > 1e-3  # The weights moved the loss.


def test_the_pipeline_adds_labels_and_weights_without_changing_the_images(rng):
    images = rng.integers(0, 256, size=(12, 4, 4, 1)).astype(np.uint8)
    labels = np.arange(12) % 3
    w = np.array([0.5, 1.0, 2.0])
    plain = list(density.pipeline(images, 4, True, seed=3, epoch=1).as_numpy_iterator())
    weighted = list(density.pipeline(images, 4, True, seed=3, epoch=1, labels=labels,
                                      class_weights=w).as_numpy_iterator())
    assert len(plain) == len(weighted) == 3
    for x, (x2, y, sw) in zip(plain, weighted):
        np.testing.assert_array_equal(x, x2)  # The same order and flips.
        np.testing.assert_array_equal(sw, w[y].astype(np.float32))
        for image, label in zip(x2, y):  # Each label stays with its image (flipped or not).
            index = [i for i in range(12) if np.array_equal(images[i], image)
                     or np.array_equal(images[i][:, ::-1], image)]
            assert labels[index[0]] == label
    evaluation = next(density.pipeline(images, 5, False, labels=labels).as_numpy_iterator())
    assert len(evaluation) == 2 and evaluation[1].tolist() == labels[:5].tolist()


# ---------------------------------------------------------------------------------------------
# Config and the run.


def test_config_keys_defaults_refusals_and_old_runs_resume():
    cfg = config.resolve_flow({})
    assert (cfg.model.class_conditional, cfg.train.class_weighting, cfg.imbalance) == (
        False, "none", None)
    cfg = config.resolve_flow({"imbalance": {"minority": [1, 4, 6], "minority_count": 250}},
                              ["model.class_conditional=true",
                               "train.class_weighting=balanced"])
    assert cfg.imbalance.minority == [1, 4, 6] and cfg.model.class_conditional
    assert config.resolve_flow({}, ["imbalance={long_tail_factor: 10}"]).imbalance \
        .long_tail_factor == 10.0
    for raw, overrides, needle in (
            ({}, ["train.class_weighting=inverse"],
             "Invalid value for key `train.class_weighting`. Expected one of ['none', "
             "'balanced']. Received: train.class_weighting='inverse'"),
            ({}, ["model.class_conditional=maybe"],
             "Invalid value for key `model.class_conditional`. Expected bool. Received: "
             "model.class_conditional='maybe'"),
            ({"imbalance": {"minority": [1, 4, 6]}}, [], "Invalid value for section `imbalance`"),
            ({"imbalance": {"minorty": [1]}}, [], "Unknown key `imbalance.minorty`")):
        with pytest.raises(config.ConfigError) as caught:
            config.resolve_flow(raw, overrides)
        assert needle in str(caught.value) and "\n" not in str(caught.value), caught.value
    with pytest.raises(ValueError, match="Invalid value for argument `num_classes`"):
        density.build_model(config.resolve_flow({}, ["model.class_conditional=true"]), (8, 8, 1))
    # A run directory written before these keys existed resumes at their defaults, and only
    # there.
    experiment = density.FlowExperiment()
    current = config.resolve_flow({}, ["data.source=digits"])
    old = json.loads(json.dumps(current.to_dict()))
    del old["imbalance"], old["model"]["class_conditional"], old["train"]["class_weighting"]
    import yaml

    recorded = yaml.safe_dump(old, sort_keys=False)
    defaults = experiment.dump_defaults(current)
    assert rundir.run_difference(recorded, experiment.dump_config(current), defaults) is None
    changed = config.resolve_flow({}, ["data.source=digits", "model.class_conditional=true"])
    assert rundir.run_difference(recorded, experiment.dump_config(changed), defaults) == (
        "model.class_conditional: absent -> True")


TINY = ["data.source=digits", "data.augment=false", "model.num_scales=1", "model.num_blocks=1",
        "model.num_filters=4", "train.epochs=2", "train.batch_size=32",
        "train.max_eval_images=200", "train.flip=false", "model.class_conditional=true",
        "train.class_weighting=balanced", "imbalance={minority: [1, 4, 6], minority_count: 20}"]


@pytest.mark.slow
def test_flow_train_on_imbalanced_digits_conditional_end_to_end(tmp_path, capsys):
    from tfimb import cli

    run_dir = tmp_path / "run"
    args = ["flow", "train", "flow_default", "--workdir", str(run_dir)]
    for item in TINY:
        args += ["--set", item]
    assert cli.main(args) == 0
    assert "samples_per_class.png" in capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    counts = results["class_counts"]["train"]
    assert [counts[c] for c in (1, 4, 6)] == [20, 20, 20] and min(
        counts[c] for c in (0, 2, 3, 5, 7, 8, 9)) > 100
    assert sum(results["class_counts"]["evaluation"]) == 200
    per_class = results["bits_per_dim_per_class"]
    assert len(per_class) == 10 and results["num_classes"] == 10
    present = [c for c, n in enumerate(results["class_counts"]["evaluation"]) if n]
    assert all(np.isfinite(per_class[c]) and per_class[c] > 0 for c in present)
    evaluation = np.array(results["class_counts"]["evaluation"])
    np.testing.assert_allclose(  # The per-class means average back to the test figure.
        np.nansum(np.array(per_class, float) * evaluation) / evaluation.sum(),
        results["bits_per_dim"]["test"], rtol=1e-5)
    weights = np.array(results["class_weights"])
    np.testing.assert_allclose((weights * counts).sum() / sum(counts), 1.0)
    grid = tf.io.decode_png((run_dir / "samples_per_class.png").read_bytes()).numpy()
    assert grid.shape == (10 * 9 + 1, 8 * 9 + 1, 1)  # A row of 8 per class, 1-pixel gaps.
    assert (run_dir / "samples.png").exists()
    # The finished run: evaluate per class, sample a class, reload without the data.
    assert cli.main(["flow", "evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "test bits/dim:" in out and "per-class test bits/dim" in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == 10
    assert cli.main(["flow", "sample", str(run_dir), "--n", "4", "--label", "4"]) == 0
    assert (run_dir / "samples_T1.0.png").exists()
    assert cli.main(["flow", "sample", str(run_dir), "--n", "4", "--label", "12"]) == 2
    err = capsys.readouterr().err
    assert "0 <= id < num_classes=10" in err and err.count("\n") == 1, err
    _, model = density.load_run(run_dir)
    assert model.num_classes == 10
