import json

import numpy as np
import pytest

import keras

from cli_helpers import run_tfimb
from tfimb import config, data
from tfimb.experiments import classify, report
from tfimb.runtime import devices, rundir

TINY = ["data.source=digits", "data.augment=false", "imbalance.majority_count=30",
        "imbalance.minority_count=5", "model.name=resnet8", "train.batch_size=32",
        "train.epochs=2", "train.lr_boundaries=[1, 2]", "mixed_precision=float32"]


def _tiny(*overrides):
    return config.resolve({}, TINY + list(overrides))


def _pytorch_sgd(w, grad, rates, steps, momentum=0.9):
    """NumPy reference: PyTorch's SGD (`v = m v + g; w -= lr v`), `steps` per epoch."""
    w, v, path = np.array(w, np.float64), 0.0, []
    for lr in rates:
        for _ in range(steps):
            v = momentum * v + grad(w)
            w = w - lr * v
            path.append(w.copy())
    return np.array(path)


@pytest.mark.parametrize("eager", [True, False])
def test_sgd_steps_are_pytorch_s_across_learning_rate_changes(eager):
    """The schedule callback rescales Keras' rate-scaled velocity where the rate changes, so
    the weights follow PyTorch's SGD (a NumPy reference) step for step, warm-up and drops
    included; Keras' own LearningRateScheduler does not."""
    rates = [0.02, 0.06, 0.1, 0.1, 0.001, 1e-5, 1e-5]  # Warm-up, a hold, two drops.
    steps, target = 4, np.array([1.0, -2.0], np.float32)
    # loss = 1/2 ||w - target||^2 on a dummy input: gradient w - target.
    reference = _pytorch_sgd([3.0, 3.0], lambda w: w - target, rates, steps)

    def run(callback):
        keras.utils.set_random_seed(0)

        class Quadratic(keras.Model):
            def build(self, _):
                self.w = self.add_weight(shape=(2,), initializer=keras.initializers.Constant(3.0))

            def call(self, x):
                return keras.ops.zeros_like(x[:, :1]) + self.w

        model = Quadratic()
        model.build((None, 1))
        model.compile(optimizer=keras.optimizers.SGD(rates[0], momentum=0.9),
                      loss=lambda y, p: 0.5 * keras.ops.sum(keras.ops.square(p - target)),
                      run_eagerly=eager)
        path = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: path.append(np.array(model.w.numpy(), np.float64)))
        x = np.zeros((steps, 1), np.float32)
        model.fit(x, x, batch_size=1, epochs=len(rates), shuffle=False, verbose=0,
                  callbacks=[callback, record])
        return np.array(path)

    corrected = run(classify.EpochLearningRate(lambda epoch: rates[epoch]))
    np.testing.assert_allclose(corrected, reference, rtol=1e-5, atol=1e-6)
    keras_own = run(keras.callbacks.LearningRateScheduler(lambda epoch: rates[epoch]))
    assert np.abs(keras_own - reference).max() > 0.05  # What the correction is for.


def test_learning_rate_schedule():
    cfg = config.resolve({})
    assert [classify.learning_rate(e, cfg) for e in (0, 14, 15, 19, 20, 24)] == [
        0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    warm = config.resolve({}, ["train.warmup_epochs=5"])
    assert [classify.learning_rate(e, warm) for e in (0, 4, 5)] == pytest.approx([0.02, 0.1, 0.1])
    cosine = config.resolve({}, ["train.lr_schedule=cosine", "train.epochs=90",
                                 "train.lr_values=[0.2]", "train.lr_boundaries=[]"])
    expected = [0.2 * 0.5 * (1 + np.cos(np.pi * e / 90)) for e in (0, 45, 89)]
    assert [classify.learning_rate(e, cosine) for e in (0, 45, 89)] == pytest.approx(expected)
    assert classify.learning_rate(45, cosine) == pytest.approx(0.1)
    warm_cosine = config.resolve({}, ["train.lr_schedule=cosine", "train.epochs=10",
                                      "train.warmup_epochs=2", "train.lr_values=[0.1]",
                                      "train.lr_boundaries=[]"])
    assert [classify.learning_rate(e, warm_cosine) for e in (0, 1, 2, 6)] == pytest.approx(
        [0.05, 0.1, 0.1, 0.05])
    with pytest.raises(config.ConfigError, match="cosine schedule"):
        config.resolve({}, ["train.lr_schedule=cosine"])  # The default boundaries [15, 20].
    with pytest.raises(config.ConfigError, match="`train.lr_schedule`"):
        config.resolve({}, ["train.lr_schedule=linear"])


def test_precision_resolution(monkeypatch):
    assert devices.resolve_precision("float32") == "float32"
    monkeypatch.setattr(devices, "cpu_has_amx_bf16", lambda: True)
    assert devices.resolve_precision("auto") == "mixed_bfloat16"
    monkeypatch.setattr(devices, "cpu_has_amx_bf16", lambda: False)
    assert devices.resolve_precision("auto") == "float32"


def test_weight_decay_is_coupled_l2_on_every_weight():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.BatchNormalization()(inputs)))
    trainer = classify.regularized(model, 0.1)
    trainer(np.ones((1, 3), np.float32), training=True)
    expected = 0.05 * sum(float(np.sum(np.square(w))) for w in model.trainable_weights)
    np.testing.assert_allclose(float(sum(trainer.losses)), expected, rtol=1e-6)
    assert len(model.trainable_weights) == 4  # Kernel, bias, gamma, beta: all decayed.


@pytest.mark.slow
def test_cli_end_to_end_run_report_and_refusals(tmp_path):
    # Under `mirrored` over 2 logical CPUs: every strategy trains through the same loop, and
    # the default strategy is covered in-process below.
    args = ["train", "default", "--workdir", str(tmp_path / "runs"),
            "--set", "distribute.strategy=mirrored", "--set", "distribute.num_cpu_devices=2"]
    for item in TINY:
        args += ["--set", item]
    result = run_tfimb(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| imbalanced, CE |" in result.stdout
    assert "| class-balanced softmax beta=0.999 |" in result.stdout
    run_dir = tmp_path / "runs" / "class_balanced_softmax"
    for name in ("config.yaml", "counts.json", "history.csv", "model.keras", "results.json",
                 "plots/training_curves.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").rglob("*.v2")) and (run_dir / "checkpoints").is_dir()
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"accuracy", "per_class_accuracy", "confusion_matrix", "counts",
                            "epochs_completed", "train_seconds", "images_per_second", "config"}
    assert results["epochs_completed"] == 2 and results["replicas"] == 2
    assert results["counts"] == json.loads((run_dir / "counts.json").read_text())["counts"]
    assert [results["counts"][c] for c in (1, 4, 6)] == [5, 5, 5]
    matrix = np.array(results["confusion_matrix"])
    assert results["accuracy"]["all"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert results["config"]["loss"] == {"name": "class_balanced_softmax", "beta": 0.999}
    header = (run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "learning_rate", "val_minority_accuracy", "val_majority_accuracy",
            "val_all_accuracy"} <= set(header)
    # The saved model loads in safe mode and reproduces the reported test accuracy.
    from tfimb import data

    model = keras.models.load_model(run_dir / "model.keras", safe_mode=True)
    cfg = config.resolve(results["config"])
    test = data.load(cfg.data, cfg.imbalance).test
    predicted = model.predict(test.images.astype(np.float32), verbose=0).argmax(-1)
    assert np.mean(predicted == test.labels) == pytest.approx(results["accuracy"]["all"])

    # A finished job of several runs (default has two variants) is never retrained: running
    # it again says so and prints its table (a single finished run is refused:
    # test_run_directory_refusals_and_resume_modes).
    again = run_tfimb(*args, cwd=tmp_path)
    assert again.returncode == 0 and "All 2 runs" in again.stdout
    assert "| class-balanced softmax beta=0.999 |" in again.stdout
    assert (run_dir / "results.json").read_text() == json.dumps(results, indent=1)

    out = tmp_path / "report"
    shown = run_tfimb("report", str(tmp_path / "runs" / "cross_entropy"), str(run_dir),
                 "--output", str(out), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "| training data / loss | majority | minority | all |" in shown.stdout
    for name in ("table.md", "training_curves.png", "effective_number.png"):
        assert (out / name).is_file()


def _prepare(run_dir, cfg, resume, is_chief=True):
    return rundir.prepare_run_dir(run_dir, config.dump(cfg),
                                  rundir.resume_mode(cfg.distribute, resume), writable=is_chief)


def test_run_directory_refusals_and_resume_modes(tmp_path):
    # Training-level resume is covered by tests/test_loop.py (in-process and a killed worker).
    cfg, other = _tiny(), _tiny("train.epochs=3")
    assert _prepare(tmp_path, cfg, resume=False) is False
    with pytest.raises(rundir.RunDirError, match="--resume"):
        _prepare(tmp_path, cfg, resume=False)
    with pytest.raises(rundir.RunDirError, match="config differs"):
        _prepare(tmp_path, other, resume=True)
    assert _prepare(tmp_path, cfg, resume=True) is True
    # Multi-worker runs resume without --resume (a restarted worker reruns its command).
    multi = _tiny("distribute.strategy=multi_worker")
    assert _prepare(tmp_path / "mw", multi, resume=False) is False
    assert _prepare(tmp_path / "mw", multi, resume=False) is True
    # A non-chief worker only checks: it writes nothing.
    assert _prepare(tmp_path / "worker", multi, False, is_chief=False) is False
    assert not (tmp_path / "worker").exists()
    with pytest.raises(rundir.RunDirError, match="nothing to resume"):
        _prepare(tmp_path / "fresh", cfg, resume=True)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(rundir.RunDirError, match="finished run"):
        _prepare(tmp_path, cfg, resume=True)


def _without(text, *keys):
    """A dumped config with `section.key`s removed: a config.yaml from an older tfimb."""
    import yaml

    tree = yaml.safe_load(text)
    for dotted in keys:
        section, key = dotted.split(".")
        del tree[section][key]
    return yaml.safe_dump(tree, sort_keys=False)


def test_a_run_started_by_an_older_tfimb_resumes_at_the_defaults_of_keys_added_since(tmp_path):
    """A config.yaml without keys added since its run started (as the CIFAR-10-LT rows started
    at 2b3329e lack train.lr_schedule, data.stream, data.service and model.weights) resumes
    when those keys hold their defaults, and only then; a refusal names the first difference."""
    cfg = _tiny()
    text, defaults = config.dump(cfg), config.dump(type(cfg)())
    added = ("train.lr_schedule", "data.stream", "data.service", "model.weights")
    old = _without(text, *added)
    assert rundir.run_difference(old, text, defaults) is None
    assert rundir.run_difference(old, text) == "data.stream: absent -> 'auto'"  # No defaults.
    cosine = config.dump(_tiny("train.lr_schedule=cosine", "train.lr_boundaries=[]",
                               "train.lr_values=[0.1]"))
    assert rundir.run_difference(_without(cosine, *added), cosine,
                                 defaults) == "train.lr_schedule: absent -> 'cosine'"
    assert rundir.run_difference(text, config.dump(_tiny("train.seed=1")),
                                 defaults) == "train.seed: 0 -> 1"
    assert rundir.run_difference(text, _without(text, "train.seed"), defaults) == (
        "train.seed: 0 -> absent")  # A key the newer config lacks is never assumed.
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "config.yaml").write_text(old)
    with pytest.raises(rundir.RunDirError, match=r"\(train\.seed: 0 -> 3\)"):
        rundir.check_run_dir(tmp_path / "seed", config.dump(_tiny("train.seed=3")), True,
                             defaults)
    # The path users take: tfimb train --resume on such a run directory.
    (tmp_path / "tiny.yaml").write_text(text)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(old)
    done = run_tfimb("train", "tiny.yaml", "--workdir", "run", "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.slow
def test_ldam_with_deferred_reweighting(tmp_path):
    cfg = _tiny("loss={name: ldam, drw_epoch: 1}", "model.head=cosine")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.loss.beta)

    results = classify.run(cfg, tmp_path, verbose=0, callbacks=[Record()])
    assert seen == [None, 0.9999]
    assert np.isfinite(results["accuracy"]["all"])
    assert "DRW from epoch 2" in report.describe(results["config"])


@pytest.mark.slow
def test_the_reference_resnet_trains_fused_and_saves_keras_layers(tmp_path):
    """model.shortcut=identity / model.padding=symmetric through tfimb train (batch norms
    fused for training, Keras' own in model.keras)."""
    cfg = _tiny("model.shortcut=identity", "model.padding=symmetric", "train.epochs=1",
                "train.lr_boundaries=[]", "train.lr_values=[0.1]")
    results = classify.run(cfg, tmp_path, verbose=0)
    assert np.isfinite(results["accuracy"]["all"])
    model = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    names = [layer.name for layer in model.get_layer("resnet8").layers]
    assert "stage2_block1_skip_merge" in names and "stage2_block1_1_pad" in names
    assert not any("proj" in name for name in names)


def test_sigmoid_losses_leave_the_last_bias_undecayed():
    cfg = config.resolve({"data": {"source": "digits"}, "imbalance": None,
                          "model": {"name": "resnet8"},
                          "loss": {"name": "sigmoid_focal", "gamma": 1.0}})
    softmax = config.resolve({"data": {"source": "digits"}, "imbalance": None,
                              "model": {"name": "resnet8"}})
    images = np.zeros((10, 8, 8, 1), np.uint8)

    split = data.Split(images, np.arange(10))
    dataset = data.Dataset(split, data.Split(images[:0], split.labels[:0]), split,
                           [str(i) for i in range(10)], 10)
    for c, excluded in ((cfg, ("logits/bias",)), (softmax, ())):
        _, trainer, _ = classify.build_trainer(c, dataset, [1])
        assert trainer.exclude == excluded
        kept = [w.path for w in trainer.inner.trainable_weights
                if not w.path.endswith(trainer.exclude)]
        assert any(p.endswith("logits/kernel") for p in kept)
        assert any(p.endswith("logits/bias") for p in kept) == (not excluded)


def test_a_failed_start_leaves_nothing_and_the_corrected_command_runs(tmp_path):
    # An out-of-range class is found with the data, before the run directory exists.
    bad = _tiny("evaluation.minority=[12]")
    with pytest.raises(config.ConfigError, match=r"evaluation.minority.*12"):
        classify.run(bad, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()
    bad = _tiny("imbalance.minority=[10]")
    with pytest.raises(Exception, match=r"imbalance.minority.*10") as info:
        classify.run(bad, tmp_path / "run", verbose=0)
    assert isinstance(info.value, data.DataError) and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_job_of_several_runs_resumes_as_a_whole(tmp_path, monkeypatch, capsys):
    from tfimb import cli

    (tmp_path / "job.yaml").write_text(
        "data: {source: digits, augment: false}\n"
        "imbalance: {minority: [1], minority_count: 5, majority_count: 30}\n"
        "model: {name: resnet8}\ntrain: {epochs: 1, batch_size: 32}\n"
        "mixed_precision: float32\n"
        "variants:\n  - {name: ce}\n  - {name: focal, loss: {name: focal, gamma: 1.0}}\n")
    workdir = tmp_path / "W"
    real_run = classify.run
    calls = []

    def killed_in_the_second_run(cfg, run_dir, resume=False, **kwargs):
        calls.append(run_dir.name)
        if len(calls) == 2:  # The process dies once the second run has its config.yaml.
            rundir.create_run_dir(run_dir, config.dump(cfg))
            raise KeyboardInterrupt("killed")
        return real_run(cfg, run_dir, resume=resume, **kwargs)

    monkeypatch.setattr(classify, "run", killed_in_the_second_run)
    args = ["train", str(tmp_path / "job.yaml"), "--workdir", str(workdir)]
    assert cli.main(args) == 130  # Ctrl-C: one line with the command that continues.
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith(" ".join(args) + " --resume")
    monkeypatch.setattr(classify, "run", real_run)
    assert (workdir / "ce" / "results.json").exists()
    assert not (workdir / "focal" / "results.json").exists()
    finished = (workdir / "ce" / "results.json").read_text()

    assert cli.main(args + ["--resume"]) == 0  # Skips ce, resumes focal.
    out = capsys.readouterr().out
    assert "ce: finished earlier, kept" in out and "focal" in out
    assert (workdir / "ce" / "results.json").read_text() == finished  # Never retrained.
    assert (workdir / "focal" / "results.json").exists()
    assert cli.main(args) == 0  # A finished job says so and prints its table.
    out = capsys.readouterr().out
    assert "All 2 runs" in out and "| training data / loss |" in out

    # A kept model loads and evaluates to its recorded results in one call.
    recorded = json.loads(finished)
    again = classify.evaluate_run(workdir / "ce")
    assert again["accuracy"] == recorded["accuracy"]
    assert again["confusion_matrix"] == recorded["confusion_matrix"]
    assert again["calibration"]["ece"] == pytest.approx(recorded["calibration"]["ece"])
    assert cli.main(["evaluate", str(workdir / "ce")]) == 0
    out = capsys.readouterr().out
    assert f"all {100 * recorded['accuracy']['all']:.2f}" in out.splitlines()[0]
    posthoc = recorded["posthoc"]
    line = [l for l in out.splitlines() if l.startswith("post-hoc logit adjustment")][0]
    assert line.startswith(f"post-hoc logit adjustment, tau {posthoc['tau']:g} (chosen on "
                           "nothing: no validation split, tau = 1): majority ")
    assert line.endswith(f"all {100 * posthoc['accuracy']['all']:.2f}")
    assert cli.main(["evaluate", str(workdir)]) == 1  # Not a run: one line.
    assert "has no config.yaml" in capsys.readouterr().err
