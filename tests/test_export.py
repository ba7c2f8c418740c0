import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras

from cli_helpers import run_tfimb
from tfimb import config, data
from tfimb.experiments import classify, export
from tfimb.experiments import density

# Runs in a process where tfimb cannot be imported: the SavedModel must stand alone.
LOADER = r"""
import json, sys
sys.modules["tfimb"] = None                      # `import tfimb` now raises ImportError.
import numpy as np
import tensorflow as tf
try:
    import tfimb  # noqa
    raise SystemExit("tfimb was importable")
except ImportError:
    pass
args = json.loads(sys.argv[1])
out = {}
cls = tf.saved_model.load(args["classifier"])
images = tf.constant(np.load(args["images"]))
r = cls.signatures["serving_default"](images=images)
out["probabilities"] = r["probabilities"].numpy().tolist()
out["class_ids"] = r["class_ids"].numpy().tolist()
out["class_names"] = [s.decode() for s in r["class_names"].numpy()]
for kind in ("png", "jpeg"):
    blobs = [open(p, "rb").read() for p in args[kind]]
    r = cls.signatures["serving_bytes"](image_bytes=tf.constant(blobs))
    out[kind] = r["probabilities"].numpy().tolist()
flow = tf.saved_model.load(args["flow"])
fimages = tf.constant(np.load(args["flow_images"]))
out["bits_per_dim"] = flow.signatures["bits_per_dim"](images=fimages)["bits_per_dim"].numpy().tolist()
out["default"] = flow.signatures["serving_default"](images=fimages)["bits_per_dim"].numpy().tolist()
out["log_prob"] = flow.signatures["log_prob"](images=fimages)["log_prob"].numpy().tolist()
s = flow.signatures["sample"](n=tf.constant(5), temperature=tf.constant(0.7))["images"]
out["sample"] = [list(s.shape), s.dtype.name]
print(json.dumps(out))
"""


def _classifier_run(root, *overrides):
    """A finished classifier run directory (untrained weights: export does not care)."""
    cfg = config.resolve({}, ["data.source=digits", "model.name=resnet8", "imbalance=null",
                              *overrides])
    dataset = data.load(cfg.data, None)
    keras.utils.set_random_seed(0)
    model = classify.build_model(cfg, dataset)
    root.mkdir()
    classify.save_model(model, root / "model.keras")
    (root / "counts.json").write_text(json.dumps({"class_names": dataset.class_names,
                                                  "counts": dataset.counts.tolist()}))
    (root / "results.json").write_text(json.dumps({"accuracy": {"all": 0.1}}))
    return model, dataset


def _flow_run(root, num_scales=2, conditional=False):
    cfg = config.resolve_flow({}, ["data.source=digits", f"model.num_scales={num_scales}",
                                   "model.num_blocks=1", "model.num_filters=4",
                                   f"model.class_conditional={str(conditional).lower()}"])
    root.mkdir()
    (root / "config.yaml").write_text(config.dump_flow(cfg))
    model = density.build_model(cfg, (8, 8, 1), 10)
    rng = np.random.default_rng(0)
    for w in model.weights:
        if w.path.endswith("/scale") or "class_prior" in w.path:
            w.assign(rng.normal(0, 0.3, size=w.shape).astype(np.float32))
    model.save_weights(root / "model.weights.h5")
    results = {"bits_per_dim": {"test": 5.0}, "image_shape": [8, 8, 1], "num_classes": 10}
    (root / "results.json").write_text(json.dumps(results))
    return model


@pytest.mark.slow
def test_exported_models_stand_alone_and_match_keras(tmp_path):
    model, dataset = _classifier_run(tmp_path / "cls")
    flow = _flow_run(tmp_path / "flow", num_scales=1)
    cls_path = export.export(tmp_path / "cls", output_dir=tmp_path / "saved")
    flow_path = export.export(tmp_path / "flow", output_dir=tmp_path / "saved")
    assert cls_path == tmp_path / "saved" / "cls" / "1"
    assert not [p for p in (tmp_path / "saved" / "cls").iterdir() if p.name.startswith(".")]

    images = dataset.test.images[:6]
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "flow_images.npy", images)
    files = {"png": [], "jpeg": []}
    for i, image in enumerate(images[:3]):
        for kind, encode in (("png", tf.io.encode_png), ("jpeg", tf.io.encode_jpeg)):
            path = tmp_path / f"{i}.{kind}"
            path.write_bytes(encode(image).numpy())
            files[kind].append(str(path))
    args = {"classifier": str(cls_path), "flow": str(flow_path),
            "images": str(tmp_path / "images.npy"),
            "flow_images": str(tmp_path / "flow_images.npy"), **files}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", LOADER, json.dumps(args)], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    expected = keras.ops.softmax(model.predict(images.astype(np.float32), verbose=0)).numpy()
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-4, atol=1e-6)
    assert out["class_ids"] == expected.argmax(1).tolist()
    assert out["class_names"] == [dataset.class_names[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(out["png"], expected[:3], rtol=1e-4, atol=1e-6)  # Lossless.
    decoded = np.stack([tf.io.decode_jpeg(open(p, "rb").read()).numpy() for p in files["jpeg"]])
    np.testing.assert_allclose(
        out["jpeg"], keras.ops.softmax(model.predict(decoded.astype(np.float32), verbose=0)),
        rtol=1e-4, atol=1e-6)

    bpd = flow.bits_per_dim(images, noise="mid").numpy()
    np.testing.assert_allclose(out["bits_per_dim"], bpd, rtol=1e-5)
    np.testing.assert_allclose(out["default"], bpd, rtol=1e-5)
    np.testing.assert_allclose(out["log_prob"], -bpd * 64 * np.log(2.0), rtol=1e-5)
    assert out["sample"] == [[5, 8, 8, 1], "uint8"]

    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    if cli.exists():
        shown = subprocess.run([str(cli), "show", "--all", "--dir", str(cls_path)], env=env,
                               capture_output=True, text=True, timeout=300).stdout
        for name in ("serving_default", "serving_bytes", "probabilities", "class_names"):
            assert name in shown


def test_export_refuses_to_overwrite_and_validates_the_run(tmp_path):
    _flow_run(tmp_path / "flow", num_scales=1)
    first = export.export(tmp_path / "flow", name="density", output_dir=tmp_path / "saved")
    second = export.export(tmp_path / "flow", name="density", output_dir=tmp_path / "saved")
    assert (first.name, second.name) == ("1", "2")
    with pytest.raises(export.ExportError, match="exists; pass --overwrite"):
        export.export(tmp_path / "flow", name="density", version=1, output_dir=tmp_path / "saved")
    marker = first / "marker"
    marker.write_text("old")
    export.export(tmp_path / "flow", name="density", version=1, output_dir=tmp_path / "saved",
                  overwrite=True)
    assert not marker.exists() and (first / "saved_model.pb").exists()
    assert sorted(p.name for p in (tmp_path / "saved" / "density").iterdir()) == ["1", "2"]
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(export.ExportError, match="no finished run"):
        export.export(tmp_path / "unfinished", output_dir=tmp_path / "saved")
    with pytest.raises(export.ExportError, match="--version"):
        export.export(tmp_path / "flow", version=0, output_dir=tmp_path / "saved")


def test_sigmoid_runs_export_per_class_sigmoid_probabilities(tmp_path):
    model, dataset = _classifier_run(tmp_path / "sig")
    results = {"accuracy": {"all": 0.1}, "config": {"loss": {"name": "sigmoid_focal"}}}
    (tmp_path / "sig" / "results.json").write_text(json.dumps(results))
    path = export.export(tmp_path / "sig", output_dir=tmp_path / "saved")
    images = dataset.test.images[:4]
    out = tf.saved_model.load(str(path)).signatures["serving_default"](
        images=tf.constant(images))
    logits = model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose(out["probabilities"], 1 / (1 + np.exp(-logits)), rtol=1e-4,
                               atol=1e-6)
    assert out["class_ids"].numpy().tolist() == logits.argmax(1).tolist()


def test_an_ldam_run_exports_from_the_command_line_with_its_scaled_softmax(tmp_path):
    """In a fresh process (the cosine head must be registered by export itself), with the
    probabilities LDAM trains: softmax(scale * cosines), `scale` as set or LDAM's default."""
    model, dataset = _classifier_run(tmp_path / "ldam", "model.head=cosine")
    images = dataset.test.images[:4]
    cosines = model.predict(images.astype(np.float32), verbose=0)
    for version, (options, scale) in enumerate(((({"scale": 10.0}), 10.0), ({}, 30.0)), 1):
        results = {"accuracy": {"all": 0.1}, "config": {"loss": {"name": "ldam", **options}}}
        (tmp_path / "ldam" / "results.json").write_text(json.dumps(results))
        done = run_tfimb("export", "ldam", "--output-dir", "saved", cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        out = tf.saved_model.load(str(tmp_path / "saved" / "ldam" / str(version))).signatures[
            "serving_default"](images=tf.constant(images))
        logits = scale * cosines
        expected = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(out["probabilities"],
                                   expected / expected.sum(1, keepdims=True), rtol=1e-4,
                                   atol=1e-6)
        assert out["class_ids"].numpy().tolist() == logits.argmax(1).tolist()


def test_signatures_check_their_inputs_and_name_the_bad_item(tmp_path):
    """Every signature rejects what the CLI would, naming the input and what was received."""
    _classifier_run(tmp_path / "cls")
    _flow_run(tmp_path / "flow", num_scales=1)
    cls = tf.saved_model.load(str(export.export(tmp_path / "cls", output_dir=tmp_path / "s")))
    flow = tf.saved_model.load(str(export.export(tmp_path / "flow", output_dir=tmp_path / "s")))

    def error(signature, **inputs):
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            signature(**{k: tf.constant(v) for k, v in inputs.items()})
        return str(caught.value)

    predict, by_bytes = cls.signatures["serving_default"], cls.signatures["serving_bytes"]
    for shape in ([2, 16, 16, 1], [2, 8, 8, 3]):  # The model takes [batch, 8, 8, 1].
        message = error(predict, images=np.zeros(shape, np.uint8))
        assert "input `images` of signature `serving_default`" in message
        assert "[batch, 8, 8, 1]" in message and f"[{' '.join(map(str, shape))}]" in message
    good = tf.io.encode_png(np.zeros([8, 8, 1], np.uint8)).numpy()
    jpeg = tf.io.encode_jpeg(np.zeros([8, 8, 1], np.uint8)).numpy()
    message = error(by_bytes, image_bytes=[good, b"not an image", good, jpeg[: len(jpeg) // 2]])
    assert "`image_bytes` of signature `serving_bytes`" in message
    assert "do not decode:] [1 3]" in message
    assert by_bytes(image_bytes=tf.constant([good, jpeg]))["class_ids"].shape == [2]

    for name in ("bits_per_dim", "log_prob", "serving_default"):
        message = error(flow.signatures[name], images=np.zeros([2, 16, 16, 1], np.uint8))
        assert f"signature `{name}`" in message and "[2 16 16 1]" in message
    sample = flow.signatures["sample"]
    for n, temperature, what in ((0, 1.0, "n >= 1"), (-3, 1.0, "n >= 1"),
                                 (2, float("nan"), "temperature > 0"),
                                 (2, -1.0, "temperature > 0"), (2, float("inf"), "finite")):
        message = error(sample, n=np.int32(n), temperature=np.float32(temperature))
        assert what in message
    assert sample(n=tf.constant(3), temperature=tf.constant(0.5))["images"].shape == [3, 8, 8, 1]


def test_a_class_conditional_flow_exports_signatures_that_take_the_class(tmp_path):
    """bits_per_dim / serving_default / log_prob(images, labels) score p(x | y) as the model
    does; sample(labels, temperature) draws one image per class id; bad labels are refused
    in Keras' form."""
    flow = _flow_run(tmp_path / "cflow", num_scales=1, conditional=True)
    assert flow.num_classes == 10
    loaded = tf.saved_model.load(str(export.export(tmp_path / "cflow",
                                                   output_dir=tmp_path / "s")))
    images = data.load(config.resolve_flow({}, ["data.source=digits"]).data).test
    x, y = tf.constant(images.images[:6]), tf.constant(images.labels[:6])
    bpd = flow.bits_per_dim(x, noise="mid", labels=y).numpy()
    assert not np.allclose(bpd, flow.bits_per_dim(x, noise="mid", labels=(y + 1) % 10))
    for name in ("bits_per_dim", "serving_default"):
        np.testing.assert_allclose(loaded.signatures[name](images=x, labels=y)["bits_per_dim"],
                                   bpd, rtol=1e-5)
    np.testing.assert_allclose(loaded.signatures["log_prob"](images=x, labels=y)["log_prob"],
                               -bpd * 64 * np.log(2.0), rtol=1e-5)
    sample = loaded.signatures["sample"]
    drawn = sample(labels=tf.constant([0, 3, 9], tf.int64), temperature=tf.constant(0.5))
    assert drawn["images"].shape == [3, 8, 8, 1] and drawn["images"].dtype == tf.uint8
    # Temperature -> 0: the class means, decoded (a bin edge may move one level).
    cold = sample(labels=tf.constant([2, 7], tf.int64), temperature=tf.constant(1e-6))
    means = flow.decode(flow.class_prior.mean.numpy()[[2, 7]]).numpy().astype(int)
    assert np.abs(cold["images"].numpy().astype(int) - means).max() <= 1

    def error(signature, **inputs):
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            signature(**{k: tf.constant(v) for k, v in inputs.items()})
        return str(caught.value)

    for name in ("bits_per_dim", "log_prob"):
        message = error(loaded.signatures[name], images=images.images[:2],
                        labels=np.array([1, 10], np.int64))
        assert f"input `labels` of signature `{name}`" in message and "0 <= id < 10" in message
        message = error(loaded.signatures[name], images=images.images[:2],
                        labels=np.array([1], np.int64))
        assert "one class id per image" in message
    assert "0 <= id < 10" in error(sample, labels=np.array([-1], np.int64),
                                   temperature=np.float32(1.0))
    assert "at least one class id" in error(sample, labels=np.zeros([0], np.int64),
                                            temperature=np.float32(1.0))
    assert "temperature > 0" in error(sample, labels=np.array([1], np.int64),
                                      temperature=np.float32(0.0))


def test_a_killed_export_leaves_nothing_the_next_export_cannot_clear(tmp_path):
    _flow_run(tmp_path / "flow", num_scales=1)
    saved = tmp_path / "saved" / "flow"
    first = export.export(tmp_path / "flow", output_dir=tmp_path / "saved")
    # Killed while writing version 2: its temporary folder is left behind.
    (saved / ".2.tmp-abc123" / "model").mkdir(parents=True)
    # Killed during `--overwrite` of version 1, between moving it aside and the swap.
    first.rename(saved / ".1.old")
    second = export.export(tmp_path / "flow", output_dir=tmp_path / "saved")
    assert second.name == "2"
    assert sorted(p.name for p in saved.iterdir()) == ["1", "2"]
    assert (saved / "1" / "saved_model.pb").exists()


@pytest.mark.slow
def test_logit_adjustment_is_served_and_recorded(tmp_path, capsys):
    """`--logit-adjustment`: both classifier signatures give the probabilities and class ids
    of `z - tau log pi` (Menon et al.'s post-hoc adjustment) under their usual names and
    shapes; tau (`auto`: results.json's) and pi are recorded in the SavedModel; a flow run, a
    bad tau and `auto` on a run that recorded none are refused in one line."""
    from tfimb import cli

    model, dataset = _classifier_run(tmp_path / "cls")
    counts = [2000, 700, 300, 120, 50, 20, 9, 4, 2, 1]  # A long tail: the adjustment bites.
    (tmp_path / "cls" / "counts.json").write_text(json.dumps(
        {"class_names": dataset.class_names, "counts": counts}))
    pi = np.array(counts) / np.sum(counts)
    results = {"accuracy": {"all": 0.1},
               "posthoc": {"tau": 0.75, "chosen_on": "validation", "pi": pi.tolist()}}
    (tmp_path / "cls" / "results.json").write_text(json.dumps(results))
    path = export.export(tmp_path / "cls", output_dir=tmp_path / "saved",
                         logit_adjustment="auto")
    loaded = tf.saved_model.load(str(path))
    images = dataset.test.images[:16]
    logits = model.predict(images.astype(np.float32), verbose=0)
    adjusted = logits - 0.75 * np.log(pi)
    assert not np.array_equal(adjusted.argmax(1), logits.argmax(1))  # The test can tell.
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    assert sorted(out) == ["class_ids", "class_names", "probabilities"]
    assert out["class_ids"].numpy().tolist() == adjusted.argmax(1).tolist()
    assert [s.decode() for s in out["class_names"].numpy()] == [
        dataset.class_names[i] for i in adjusted.argmax(1)]
    expected = np.exp(adjusted - adjusted.max(1, keepdims=True))
    np.testing.assert_allclose(out["probabilities"], expected / expected.sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)
    blobs = tf.constant([tf.io.encode_png(image).numpy() for image in images[:4]])
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=blobs)
    assert by_bytes["class_ids"].numpy().tolist() == adjusted[:4].argmax(1).tolist()
    recorded = loaded.signatures["logit_adjustment"]()
    assert float(recorded["tau"]) == 0.75
    np.testing.assert_allclose(recorded["pi"], pi, rtol=1e-6)
    asset = json.loads((path / "assets" / "logit_adjustment.json").read_text())
    assert (asset["tau"], asset["counts"], asset["chosen_on"]) == (0.75, counts, "validation")
    np.testing.assert_allclose(asset["pi"], pi, rtol=1e-12)

    # A number from the command line; without the option, nothing changes.
    assert cli.main(["export", str(tmp_path / "cls"), "--output-dir", str(tmp_path / "saved"),
                     "--logit-adjustment", "0"]) == 0
    assert "z - 0 * log(pi)" in capsys.readouterr().out
    plain = tf.saved_model.load(str(export.export(tmp_path / "cls",
                                                  output_dir=tmp_path / "saved")))
    assert "logit_adjustment" not in plain.signatures
    for version in (plain, tf.saved_model.load(str(tmp_path / "saved" / "cls" / "2"))):
        served = version.signatures["serving_default"](images=tf.constant(images))
        assert served["class_ids"].numpy().tolist() == logits.argmax(1).tolist()

    _flow_run(tmp_path / "flow", num_scales=1)
    old = tmp_path / "old"
    _classifier_run(old)  # results.json without `posthoc`: a run from an older tfimb.
    for run, value, needle in ((tmp_path / "flow", "auto", "is a flow run"),
                               (tmp_path / "cls", "-1", "finite tau >= 0"),
                               (tmp_path / "cls", "nan", "finite tau >= 0"),
                               (tmp_path / "cls", "big", "finite tau >= 0"),
                               (old, "auto", "records no post-hoc tau")):
        assert cli.main(["export", str(run), "--output-dir", str(tmp_path / "refused"),
                         "--logit-adjustment", value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tfimb: Invalid value for argument `--logit-adjustment`.")
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "refused").exists()
    with pytest.raises(export.ExportArgumentError, match="is a flow run"):
        export.export(tmp_path / "flow", output_dir=tmp_path / "refused", logit_adjustment=1.0)
