"""The decoupled second stage (`tfimb decouple`, `tfimb.experiments.decouple`): each method against
a NumPy reference, eagerly and in `tf.function`; frozen backbones stay frozen; the command
writes a run directory with `tfimb train`'s results schema on the first run's training set;
hyper-parameters are chosen on the validation split; errors are one line."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cli_helpers import run_tfimb
from tfimb import config, models
from tfimb.experiments import classify, decouple

TINY_YAML = """\
data: {source: digits, augment: false}
imbalance: {long_tail_factor: 10}
model: {name: resnet8}
loss: {name: softmax_cross_entropy}
train: {epochs: 2, batch_size: 32, lr_values: [0.05, 0.01], lr_boundaries: [1]}
mixed_precision: float32
"""
SHORT_STAGE = ["--set", "train.epochs=2", "--set", "train.warmup_epochs=1",
               "--set", "train.lr_boundaries=[1]", "--set", "train.lr_values=[0.1,0.01]"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("decouple")
    classify.run(config.resolve(yaml.safe_load(TINY_YAML)), root / "first", verbose=0)
    return root / "first"


def _classifier(num_classes=4):
    """A nested classifier in tfimb's layout: normalisation, then a backbone ending in `logits`."""
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((5,))
    h = keras.layers.Dense(6, activation="relu")(inner_in)
    h = keras.layers.BatchNormalization()(h)
    backbone = keras.Model(inner_in, keras.layers.Dense(num_classes, name="logits")(h),
                           name="backbone")
    inputs = keras.Input((5,), name="image")
    normalized = keras.layers.Normalization(mean=0.5, variance=4.0, name="normalize")(inputs)
    return keras.Model(inputs, backbone(normalized))


def _x(n=16):
    return np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)


def _both(model, x):
    eager = model(x, training=False).numpy()
    graph = tf.function(lambda v: model(v, training=False))(tf.constant(x)).numpy()
    np.testing.assert_allclose(eager, graph, rtol=1e-6, atol=1e-6)
    return eager


def test_feature_model_reads_what_the_logits_layer_reads():
    model, x = _classifier(), _x()
    f = _both(decouple.feature_model(model), x)
    layer = model.layers[-1].get_layer("logits")
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    np.testing.assert_allclose(f @ kernel + bias, _both(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_tau_normalisation_against_numpy(tau):
    model, x = _classifier(), _x()
    f = decouple.feature_model(model)(x).numpy().astype(np.float64)
    layer = model.layers[-1].get_layer("logits")
    w, b = layer.kernel.numpy().astype(np.float64), layer.bias.numpy()
    expected = f @ (w / np.linalg.norm(w, axis=0) ** tau) + b
    np.testing.assert_allclose(_both(decouple.tau_normalized(model, tau), x), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.kernel.numpy(), w.astype(np.float32))  # Untouched.


def test_ncm_logits_are_negative_squared_distances_to_normalised_class_means():
    model, x = _classifier(3), _x(30)
    labels = np.arange(30) % 3
    ncm = decouple.ncm_model(model, tf.data.Dataset.from_tensor_slices((x, labels)).batch(7),
                             labels, 3)
    f = decouple.feature_model(model)(x).numpy().astype(np.float64)
    g = (f - f.mean(0)) / np.linalg.norm(f - f.mean(0), axis=1, keepdims=True)
    means = np.stack([g[labels == c].mean(0) for c in range(3)])
    expected = -((g[:, None, :] - means[None]) ** 2).sum(-1)
    np.testing.assert_allclose(_both(ncm, x), expected, rtol=1e-4, atol=1e-5)


def test_lws_starts_as_the_first_model_and_learns_only_its_scales():
    model, x = _classifier(), _x()
    lws = decouple.lws_model(model)
    np.testing.assert_allclose(_both(lws, x), _both(model, x), rtol=1e-6, atol=1e-6)
    assert [w.path.split("/")[-1] for w in lws.trainable_weights] == ["scales"]
    lws.get_layer("class_scales").scales.assign([1.0, 2.0, 0.5, 3.0])
    np.testing.assert_allclose(lws(x).numpy(), model(x).numpy() * [1.0, 2.0, 0.5, 3.0],
                               rtol=1e-6, atol=1e-6)


def test_crt_trains_a_fresh_classifier_and_leaves_the_backbone_and_its_statistics_frozen():
    model, x = _classifier(), _x(64)
    before = [w.numpy().copy() for w in model.weights]
    crt = decouple.crt_model(model, 4, seed=3)
    assert sorted(w.path.split("/")[-1] for w in crt.trainable_weights) == ["bias", "kernel"]
    crt.compile(keras.optimizers.SGD(0.5),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    crt.fit(x, np.arange(64) % 4, batch_size=16, epochs=2, verbose=0)
    for w, old in zip(model.weights, before):  # Batch-norm moving statistics included.
        np.testing.assert_array_equal(w.numpy(), old)
    assert not np.allclose(crt.get_layer("logits").kernel.numpy(),
                           model.layers[-1].get_layer("logits").kernel.numpy())


def test_choose_tau_takes_the_best_balanced_validation_accuracy():
    model, x = _classifier(), _x(40)
    labels = np.argmax(decouple.tau_normalized(model, 1.5)(x).numpy(), axis=1)
    tau, curve = decouple.choose_tau(model, tf.data.Dataset.from_tensor_slices(
        (x, labels)).batch(8), labels, [0.0, 1.5, 0.5])
    assert list(curve) == [0.0, 0.5, 1.5] and curve[1.5] == 1.0 and tau <= 1.5
    assert curve[tau] == max(curve.values())


def test_heads_save_and_load_in_a_model_file(tmp_path):
    import tfimb

    model, x = _classifier(), _x()
    for stage in (decouple.lws_model(model), decouple.ncm_model(
            model, tf.data.Dataset.from_tensor_slices((x, np.arange(16) % 4)).batch(4),
            np.arange(16) % 4, 4)):
        path = tmp_path / f"{stage.name}.keras"
        stage.save(path)
        tfimb.register_all()
        loaded = keras.saving.load_model(path, compile=False)
        np.testing.assert_allclose(loaded(x).numpy(), stage(x).numpy(), rtol=1e-6, atol=1e-6)
    assert isinstance(models.ClassScales(2), keras.layers.Layer)


@pytest.mark.parametrize("method", ["tau_norm", "ncm", "lws", "crt"])
def test_the_command_writes_a_run_on_the_first_runs_training_set(first_run, method):
    extra = SHORT_STAGE if method in ("crt", "lws") else []
    out = first_run.parent / f"first_{method}"
    if method == "tau_norm":  # The command line once (the cheapest); the others in-process.
        done = run_tfimb("decouple", str(first_run), "--method", method, *extra,
                         cwd=first_run.parent)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{out}: {method} on {first_run}" in done.stdout
    else:
        decouple.run(config.stage_config(first_run, method, extra[1::2]), out, verbose=0)
    results = json.loads((out / "results.json").read_text())
    first = json.loads((first_run / "results.json").read_text())
    assert set(first) <= set(results) and results["stage"]["method"] == method
    assert results["counts"] == first["counts"]  # The validation split took nothing from it.
    held_out = results["stage"]["validation_counts"]
    assert max(held_out) <= 100 and sum(held_out) > 0
    recorded = config.load(out / "config.yaml")
    assert recorded.data.validation_from == "left_out"
    assert recorded.data.sampling == ("class_balanced" if method in ("crt", "lws")
                                      else "instance")
    if method == "tau_norm":
        assert results["stage"]["chosen_on"] == "validation"
        assert results["stage"]["tau"] in [float(t) for t in
                                           results["stage"]["validation_balanced_accuracy"]]
    # The stage's model.keras evaluates to its recorded results, in one call.
    again = classify.evaluate_run(out)
    assert again["accuracy"] == results["accuracy"]
    if method in ("lws", "ncm"):  # tfimb's own heads: the SavedModel serves them.
        from tfimb.experiments import export

        path = export.export(out, output_dir=first_run.parent / "saved")
        _, model = classify.load_run(out)
        images = np.random.default_rng(0).integers(0, 17, (3, 8, 8, 1)).astype(np.uint8)
        served = tf.saved_model.load(str(path)).signatures["serving_default"](
            images=tf.constant(images))
        logits = model(images.astype(np.float32)).numpy()
        np.testing.assert_allclose(served["probabilities"].numpy(),
                                   tf.nn.softmax(logits).numpy(), rtol=1e-4, atol=1e-6)


def test_refusals_are_one_line(first_run, tmp_path):
    bad = run_tfimb("decouple", str(first_run), "--method", "knn", cwd=tmp_path)
    assert bad.returncode != 0 and "Invalid value for argument `--method`. Expected one of " \
        "['crt', 'lws', 'tau_norm', 'ncm']. Received: --method='knn'" in bad.stderr
    empty = run_tfimb("decouple", str(tmp_path), "--method", "crt", cwd=tmp_path)
    assert empty.returncode != 0 and "has no config.yaml: expected the directory of a " \
        "finished `tfimb train` run" in empty.stderr
    for result in (bad, empty):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "config.yaml").write_text("stage: {method: crt, from_run: /runs/first}\n")
    (staged / "model.keras").write_bytes(b"")
    with pytest.raises(config.ConfigError, match="is a second-stage run .crt.; give the first "
                                                 "run's directory, /runs/first"):
        config.stage_config(staged, "crt")
    cosine = keras.Sequential([keras.Input((3,)), models.CosineClassifier(2, name="logits")])
    with pytest.raises(ValueError, match="Expected a classifier whose `logits` layer is Dense"):
        decouple.tau_normalized(cosine, 1.0)
    x = _x(6)[:, :3]
    ncm = decouple.ncm_model(cosine, tf.data.Dataset.from_tensor_slices(
        (x, np.arange(6) % 2)).batch(3), np.arange(6) % 2, 2)  # NCM takes any head.
    assert ncm(x).shape == (6, 2)


def test_an_interrupted_crt_stage_says_how_to_continue_and_resumes_exactly(
        first_run, tmp_path, monkeypatch, capsys):
    import shlex
    import signal

    from test_faults import _Signal
    from tfimb import cli

    whole = decouple.run(config.stage_config(first_run, "crt", SHORT_STAGE[1::2]),
                         tmp_path / "whole", verbose=0)
    real = decouple.DecoupleExperiment.callbacks
    monkeypatch.setattr(decouple.DecoupleExperiment, "callbacks",
                        lambda *a: real(*a) + [_Signal(1, 2, (signal.SIGINT,))])
    args = ["decouple", str(first_run), "--method", "crt", "--workdir", str(tmp_path / "cut"),
            *SHORT_STAGE]
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith(shlex.join(args) + " --resume")
    monkeypatch.setattr(decouple.DecoupleExperiment, "callbacks", real)
    assert cli.main(args + ["--resume"]) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert resumed["accuracy"] == whole["accuracy"]
    assert resumed["confusion_matrix"] == whole["confusion_matrix"]


def test_classes_the_imbalance_kept_whole_have_no_validation_and_say_so(tmp_path, capsys):
    """The imbalanced-CIFAR-10 layout: majority classes kept whole leave nothing out, so the
    stage's validation split holds minority classes only; their group records null there."""
    import yaml

    from tfimb import cli

    raw = yaml.safe_load(TINY_YAML)
    raw["imbalance"] = {"minority": [1, 4, 6], "minority_count": 7}
    raw["train"].update(epochs=1, lr_values=[0.05], lr_boundaries=[])
    classify.run(config.resolve(raw), tmp_path / "first", verbose=0)
    assert cli.main(["decouple", str(tmp_path / "first"), "--method", "crt",
                     *SHORT_STAGE]) == 0
    out = capsys.readouterr().out
    assert ("note: the validation split holds no image of classes [0, 2, 3, 5, 7, 8, 9] (the "
            "imbalance kept them whole)") in out
    results = json.loads((tmp_path / "first_crt" / "results.json").read_text())
    assert results["stage"]["validation_counts"] == [0, 100, 0, 0, 100, 0, 100, 0, 0, 0]
    best = results["best_evaluated_epoch"]["accuracy"]
    assert best["majority"] is None and best["minority"] == best["all"]
