"""`tfimb export`: self-contained SavedModels for TF Serving, from classifier or flow runs.

`saved_models/NAME/VERSION/` loads with `tf.saved_model.load` in a process that imports only
TensorFlow: every computation (normalisation, the network, softmax, image decoding, the flow's
preprocessing and bijectors) is in the graph, and no custom object is needed.

Classifier signatures (`keras.export.ExportArchive`):
  serving_default(images: uint8 [batch, H, W, C]) and serving_bytes(image_bytes: string [batch],
  encoded JPEG or PNG) -> probabilities float32 [batch, classes], class_ids int64 [batch],
  class_names string [batch]. Outputs are float32 for mixed-precision models too.
  With `logit_adjustment` (`tfimb export --logit-adjustment [TAU|auto]`) both compute them
  from the post-hoc adjusted logits `z - tau * log(pi)` (Menon et al., ICLR 2021; pi: the
  training priors from counts.json), so `class_ids` is the adjusted prediction, and the
  SavedModel records tau and pi: a `logit_adjustment() -> tau float32 [], pi float32
  [classes]` signature and `assets/logit_adjustment.json`.
Flow signatures:
  bits_per_dim / serving_default(images: uint8) -> bits_per_dim float32 [batch];
  log_prob(images: uint8) -> log_prob float32 [batch]: log P(image) in nats of the discrete
  image, `log p(x) - D log 256`; both dequantise deterministically at mid-bin (x_int + 1/2)/256.
  sample(n: int32 [], temperature: float32 []) -> images uint8 [n, H, W, C].
  A class-conditional flow's signatures take the class: bits_per_dim / serving_default /
  log_prob(images: uint8, labels: int64 [batch]) score p(x | y), and
  sample(labels: int64 [n], temperature: float32 []) draws one image of each class id in
  `labels` (z = mu_y + temperature * sigma_y * eps).

Every signature checks its inputs in the graph, as the CLI does, and fails with Keras' form of
message (the input, what is valid, what was received): images must have the model's height,
width and channels; in a bytes batch, the index of each item that does not decode is named;
`sample` takes n >= 1 and a finite temperature > 0; `labels` take one class id per image, each
0 <= id < the number of classes.

The version is written to a temporary directory and renamed into place, so a server never sees
a half-written version; an existing version is replaced only with `overwrite=True`. A temporary
folder left by a killed export is removed by the next export into the same model folder, and a
version that a killed `--overwrite` had moved aside is put back first.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import pathlib
import shutil
import tempfile
from typing import Any, Literal

import keras
import tensorflow as tf

import tfimb
from tfimb import catalog, losses, posthoc
from tfimb._checks import PathLike
from tfimb.errors import TfimbError, UsageError


class ExportError(TfimbError, RuntimeError):
    """A run directory that cannot be exported, or a version that exists."""


class ExportArgumentError(ExportError, UsageError):
    """An invalid `--name` or `--version` (exit status 2, like other usage errors)."""


def run_kind(run_dir: PathLike) -> Literal["classifier", "flow"]:
    """"classifier" or "flow" for a finished run directory; ExportError otherwise."""
    run_dir = pathlib.Path(run_dir)
    results = run_dir / "results.json"
    if not results.exists():
        raise ExportError(f"{run_dir} holds no finished run (no results.json): train it to the "
                          "end first (`tfimb train` / `tfimb flow train`, with --resume).")
    with open(results) as f:
        keys = json.load(f)
    if "accuracy" in keys and (run_dir / "model.keras").exists():
        return "classifier"
    if "bits_per_dim" in keys and (run_dir / "model.weights.h5").exists():
        return "flow"
    raise ExportError(f"{run_dir} has results.json but no model.keras (classifier) or "
                      "model.weights.h5 (flow) to export.")


def _checked_images(images, shape: list[int], signature: str):
    """`images` after an in-graph check that each is `shape` ([H, W, C]); Keras' message form."""
    expected = "[batch, " + ", ".join(str(d) for d in shape) + "]"
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(images)[1:], shape)),
        [f"Invalid value for input `images` of signature `{signature}`. Expected uint8 images "
         f"of shape {expected} (the model's input). Received shape:", tf.shape(images)],
        summarize=8)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _asks_auto(value: float | str) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _recorded_posthoc(run_dir: pathlib.Path) -> dict[str, Any]:
    """results.json's `posthoc` section ({} for a run that finished before it existed)."""
    return json.loads((run_dir / "results.json").read_text()).get("posthoc") or {}


def logit_adjustment_tau(run_dir: PathLike, value: float | str) -> float:
    """The tau that `--logit-adjustment VALUE` asks for: "auto" reads the tau the run chose
    (results.json's `posthoc`), a number is that tau (finite, >= 0); else ExportArgumentError,
    one line in Keras' form."""
    run_dir = pathlib.Path(run_dir)
    if _asks_auto(value):
        recorded = _recorded_posthoc(run_dir)
        if recorded.get("tau") is None:
            raise ExportArgumentError(
                "Invalid value for argument `--logit-adjustment`. Expected a tau >= 0: the "
                f"results.json of {run_dir} records no post-hoc tau (its run finished before "
                "tfimb chose one), so `auto` has none to read. Received: "
                f"--logit-adjustment={value!r}")
        return float(recorded["tau"])
    try:
        return posthoc.check_tau(value, "--logit-adjustment")
    except ValueError:
        raise ExportArgumentError(
            "Invalid value for argument `--logit-adjustment`. Expected `auto` (the tau in "
            "results.json) or a finite tau >= 0. Received: "
            f"--logit-adjustment={value!r}") from None


def _logit_adjustment_record(run_dir: pathlib.Path, value: float | str, tau: float,
                             counts: list[int], class_names: list[str]) -> dict[str, Any]:
    """assets/logit_adjustment.json: what the serving signatures subtract, and where tau came
    from."""
    auto = _asks_auto(value)
    return {"formula": "probabilities and class_ids of logits - tau * log(pi)",
            "tau": tau, "pi": posthoc.priors(counts).tolist(), "counts": counts,
            "class_names": class_names,
            "tau_from": "results.json posthoc" if auto else "--logit-adjustment",
            "chosen_on": _recorded_posthoc(run_dir).get("chosen_on") if auto else None,
            "reference": "Menon et al., Long-tail learning via logit adjustment, ICLR 2021"}


def _classifier_archive(run_dir: PathLike, tau: float | None = None
                        ) -> keras.export.ExportArchive:
    """The classifier's signatures; with `tau`, over the post-hoc adjusted logits
    `z - tau * log(pi)` (pi from counts.json), plus the `logit_adjustment` signature that
    returns tau and pi."""
    run_dir = pathlib.Path(run_dir)
    tfimb.register_all()  # model.keras may hold tfimb layers (the cosine head).
    model = keras.saving.load_model(run_dir / "model.keras", compile=False, safe_mode=True)
    with open(run_dir / "counts.json") as f:
        recorded_counts = json.load(f)
    class_names, counts = recorded_counts["class_names"], recorded_counts["counts"]
    height, width, channels = model.input_shape[1:]
    names = tf.constant(class_names)
    # Per-class probabilities as the run's loss defines them: one-vs-all sigmoids for the
    # sigmoid losses, a softmax otherwise; LDAM's softmax is over its cosines times `scale`
    # (the margin only acts on training labels).
    results = json.loads((run_dir / "results.json").read_text())
    loss = results.get("config", {}).get("loss", {})
    entry = catalog.BY_NAME.get(loss.get("name"))
    probabilities = (tf.math.sigmoid if entry is not None and entry.activation == "sigmoid"
                     else tf.nn.softmax)
    logit_scale = 1.0
    if loss.get("name") == "ldam":  # config.yaml keeps only the options the user set.
        default = inspect.signature(losses.LDAM).parameters["scale"].default
        logit_scale = float(loss.get("scale", default))

    def predict(images):
        logits = logit_scale * tf.cast(model(tf.cast(images, tf.float32), training=False),
                                       tf.float32)
        if tau is not None:  # Post-hoc logit adjustment: argmax(z - tau * log pi).
            logits = posthoc.adjust_logits(logits, counts, tau)
        class_ids = tf.argmax(logits, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities(logits), "class_ids": class_ids,
                "class_names": tf.gather(names, class_ids)}

    def predict_images(images):
        return predict(_checked_images(images, [height, width, channels], "serving_default"))

    def decode(data):
        """Encoded JPEG/PNG -> [H, W, C] float pixel values (resized only if its size differs)."""
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        same = tf.reduce_all(tf.shape(image)[:2] == [height, width])
        return tf.cond(
            same, lambda: tf.reshape(tf.cast(image, tf.float32), [height, width, channels]),
            lambda: tf.round(tf.image.resize(image, (height, width), antialias=True)))

    def undecodable(image_bytes):
        """Indices of the items `decode` fails on (a corrupt item otherwise fails the whole
        batch with a decoder message that names no item)."""
        n = tf.shape(image_bytes, out_type=tf.int64)[0]
        decoded = tf.data.Dataset.range(n).map(
            lambda i: (i, decode(tf.gather(image_bytes, i)))).ignore_errors()
        ok = decoded.reduce(tf.zeros([n], tf.bool), lambda seen, item: tf.tensor_scatter_nd_update(
            seen, [[item[0]]], [True]))
        return tf.where(tf.logical_not(ok))[:, 0]

    def predict_bytes(image_bytes):
        bad = undecodable(image_bytes)
        check = tf.debugging.Assert(tf.equal(tf.size(bad), 0), [
            "Invalid value for input `image_bytes` of signature `serving_bytes`. Expected "
            "encoded JPEG, PNG, GIF, BMP or WebP images. These items of the batch (0-based) do "
            "not decode:", bad], summarize=20)
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32)
        return predict(tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", predict_images, [tf.TensorSpec(
        [None, height, width, channels], tf.uint8, name="images")])
    archive.add_endpoint("serving_bytes", predict_bytes,
                         [tf.TensorSpec([None], tf.string, name="image_bytes")])
    if tau is not None:
        pi = posthoc.priors(counts)

        def logit_adjustment():
            """tau and pi of the adjustment the serving signatures apply (no inputs)."""
            return {"tau": tf.constant(tau, tf.float32), "pi": tf.constant(pi, tf.float32)}

        archive.add_endpoint("logit_adjustment", logit_adjustment, [])
    return archive


def _flow_archive(run_dir: PathLike) -> keras.export.ExportArchive:
    # Imported here, for flows only: the density experiment loads TensorFlow Probability.
    from tfimb.experiments import density

    _, model = density.load_run(run_dir)
    if model.num_classes is not None:
        return _conditional_flow_archive(model)
    shape = list(model.image_shape)
    num_dims = model.num_dims
    image_spec = [tf.TensorSpec([None] + shape, tf.uint8, name="images")]

    def bits_per_dim_as(signature):
        def bits_per_dim(images):
            images = _checked_images(images, shape, signature)
            return {"bits_per_dim": model.bits_per_dim(images, noise="mid")}
        return bits_per_dim

    def log_prob(images):
        bpd = model.bits_per_dim(_checked_images(images, shape, "log_prob"), noise="mid")
        return {"log_prob": -bpd * num_dims * math.log(2.0)}

    def sample(n, temperature):
        checks = [
            tf.debugging.Assert(n >= 1, [
                "Invalid value for input `n` of signature `sample`. Expected n >= 1. "
                "Received: n =", n]),
            tf.debugging.Assert(tf.logical_and(tf.math.is_finite(temperature), temperature > 0), [
                "Invalid value for input `temperature` of signature `sample`. Expected a finite "
                "temperature > 0. Received: temperature =", temperature])]
        with tf.control_dependencies(checks):
            n = tf.identity(n)
        z = tf.random.normal(tf.concat([[n], shape], 0)) * temperature
        return {"images": model.decode(z)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", bits_per_dim_as("serving_default"), image_spec)
    archive.add_endpoint("bits_per_dim", bits_per_dim_as("bits_per_dim"), image_spec)
    archive.add_endpoint("log_prob", log_prob, image_spec)
    archive.add_endpoint("sample", sample, [tf.TensorSpec([], tf.int32, name="n"),
                                            tf.TensorSpec([], tf.float32, name="temperature")])
    return archive


def _temperature_check(temperature, signature: str):
    """The in-graph check of a finite temperature > 0."""
    return tf.debugging.Assert(tf.logical_and(tf.math.is_finite(temperature), temperature > 0), [
        f"Invalid value for input `temperature` of signature `{signature}`. Expected a finite "
        "temperature > 0. Received: temperature =", temperature])


def _checked_labels(labels, num_classes: int, signature: str, images=None):
    """int32 `labels` after in-graph checks: class ids 0 <= id < num_classes, one per image."""
    checks = [tf.debugging.Assert(
        tf.reduce_all((labels >= 0) & (labels < num_classes)),
        [f"Invalid value for input `labels` of signature `{signature}`. Expected class ids "
         f"0 <= id < {num_classes}. Received:", labels], summarize=20)]
    if images is not None:
        checks.append(tf.debugging.Assert(
            tf.equal(tf.shape(labels)[0], tf.shape(images)[0]),
            [f"Invalid value for input `labels` of signature `{signature}`. Expected one class "
             "id per image. Received: labels, images =", tf.shape(labels)[0],
             tf.shape(images)[0]]))
    with tf.control_dependencies(checks):
        return tf.cast(labels, tf.int32)


def _conditional_flow_archive(model: Any) -> keras.export.ExportArchive:
    """The flow signatures of a class-conditional RealNVP: each takes the class ids."""
    shape, num_dims, num_classes = list(model.image_shape), model.num_dims, model.num_classes
    specs = [tf.TensorSpec([None] + shape, tf.uint8, name="images"),
             tf.TensorSpec([None], tf.int64, name="labels")]

    def checked(images, labels, signature):
        images = _checked_images(images, shape, signature)
        return images, _checked_labels(labels, num_classes, signature, images)

    def bits_per_dim_as(signature):
        def bits_per_dim(images, labels):
            images, labels = checked(images, labels, signature)
            return {"bits_per_dim": model.bits_per_dim(images, noise="mid", labels=labels)}
        return bits_per_dim

    def log_prob(images, labels):
        images, labels = checked(images, labels, "log_prob")
        bpd = model.bits_per_dim(images, noise="mid", labels=labels)
        return {"log_prob": -bpd * num_dims * math.log(2.0)}

    def sample(labels, temperature):
        checks = [_temperature_check(temperature, "sample"), tf.debugging.Assert(
            tf.size(labels) >= 1, ["Invalid value for input `labels` of signature `sample`. "
                                   "Expected at least one class id (one per image). Received "
                                   "labels of size", tf.size(labels)])]
        with tf.control_dependencies(checks):
            labels = _checked_labels(labels, num_classes, "sample")
        return {"images": model.decode(model.class_prior.sample(labels, temperature))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", bits_per_dim_as("serving_default"), specs)
    archive.add_endpoint("bits_per_dim", bits_per_dim_as("bits_per_dim"), specs)
    archive.add_endpoint("log_prob", log_prob, specs)
    archive.add_endpoint("sample", sample, [tf.TensorSpec([None], tf.int64, name="labels"),
                                            tf.TensorSpec([], tf.float32, name="temperature")])
    return archive


def _recover(model_dir: pathlib.Path) -> None:
    """Undo what a killed export left in `model_dir`: remove its temporary folders, and put
    back a version that an `--overwrite` had moved aside before its replacement was in place."""
    for leftover in model_dir.glob(".*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in model_dir.glob(".*.old"):
        version = model_dir / old.name[1:-len(".old")]
        if version.exists():  # The swap finished: the old copy is garbage.
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, version)


def next_version(model_dir: PathLike) -> int:
    versions = [int(p.name) for p in pathlib.Path(model_dir).glob("*") if p.name.isdigit()]
    return max(versions, default=0) + 1


def export(run_dir: PathLike, name: str | None = None, version: int | None = None,
           output_dir: PathLike = "saved_models", overwrite: bool = False,
           logit_adjustment: float | str | None = None) -> pathlib.Path:
    """Export a finished run to `output_dir/NAME/VERSION/`; return that path.

    `logit_adjustment` (classifier runs only): "auto" (the tau results.json's `posthoc`
    recorded, chosen on the run's validation split) or a tau >= 0. The classifier signatures
    then give the probabilities and `class_ids` of `z - tau * log(pi)`, Menon et al.'s
    post-hoc adjustment, and the SavedModel records tau and pi (the `logit_adjustment`
    signature and `assets/logit_adjustment.json`). None (default): the logits as trained.
    """
    run_dir = pathlib.Path(run_dir)
    kind = run_kind(run_dir)
    tau = None
    if logit_adjustment is not None:
        if kind != "classifier":
            raise ExportArgumentError(
                "Invalid value for argument `--logit-adjustment`. Expected a classifier run: "
                f"{run_dir} is a flow run, which has no class logits to adjust. Received: "
                f"--logit-adjustment={logit_adjustment!r}")
        tau = logit_adjustment_tau(run_dir, logit_adjustment)
    name = name or run_dir.resolve().name
    if not name or "/" in name or name.startswith("."):
        raise ExportArgumentError("Invalid value for argument `--name`. Expected a folder "
                                  f"name. Received: --name={name!r}")
    model_dir = pathlib.Path(output_dir) / name
    if model_dir.is_dir():
        _recover(model_dir)
    if version is None:
        version = next_version(model_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportArgumentError("Invalid value for argument `--version`. Expected an "
                                  f"integer >= 1. Received: --version={version!r}")
    target = model_dir / str(version)
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite to replace it, or another "
                          "--version.")
    archive = (_classifier_archive(run_dir, tau) if kind == "classifier"
               else _flow_archive(run_dir))
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=model_dir))
    try:
        archive.write_out(str(staging / "model"), verbose=False)
        if tau is not None:  # Beside the graph: readable without TensorFlow.
            counts = json.loads((run_dir / "counts.json").read_text())
            record = _logit_adjustment_record(run_dir, logit_adjustment, tau,
                                              counts["counts"], counts["class_names"])
            (staging / "model" / "assets").mkdir(exist_ok=True)
            (staging / "model" / "assets" / "logit_adjustment.json").write_text(
                json.dumps(record, indent=1) + "\n")
        if target.exists():  # --overwrite: move the old version aside, then swap.
            old = model_dir / f".{version}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(staging / "model", target)
            shutil.rmtree(old)
        else:
            os.rename(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
