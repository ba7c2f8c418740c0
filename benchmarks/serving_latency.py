"""Latency of an exported classifier SavedModel on CPU beside the Keras model's `predict`.

    python benchmarks/serving_latency.py                 # a fresh ResNet-20 (32x32x3), exported
    python benchmarks/serving_latency.py --run runs/cifar10_imbalanced_cpu/imbalanced_ce

Without --run it builds an untrained ResNet-20 run directory (latency does not depend on the
weights), exports it with `tfimb export` into a temporary folder, loads it with
`tf.saved_model.load` and times `serving_default` at batch 1 and 64 (median of --repeats calls
after warm-up) beside `model.predict` and a direct `model(x)` call on the same images.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras  # noqa: E402

from tfimb.experiments import export  # noqa: E402
from tfimb.models import resnet  # noqa: E402


def _fresh_run(root):
    inputs = keras.Input((32, 32, 3))
    normalized = keras.layers.Normalization(mean=[120.0] * 3, variance=[4000.0] * 3)(inputs)
    model = keras.Model(inputs, resnet.resnet20(num_classes=10)(normalized))
    root.mkdir(parents=True)
    model.save(root / "model.keras")
    (root / "counts.json").write_text(json.dumps({"class_names": [str(i) for i in range(10)],
                                                  "counts": [1] * 10}))
    (root / "results.json").write_text(json.dumps({"accuracy": {}}))
    return root


def _median_ms(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="a finished classifier run directory")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(args.run) if args.run else _fresh_run(pathlib.Path(tmp) / "resnet20")
        path = export.export(run, output_dir=pathlib.Path(tmp) / "saved")
        served = tf.saved_model.load(str(path)).signatures["serving_default"]
        model = keras.saving.load_model(run / "model.keras", compile=False)
        shape = model.input_shape[1:]
        print(tfimb.platform_info.describe())
        print(f"{run.name}: images {shape}; {platform.machine()}, {os.cpu_count()} CPUs, "
              f"TF {tf.__version__}; median of {args.repeats} calls")
        print(f"\n{'batch':>5} {'SavedModel ms':>14} {'Keras predict ms':>17} "
              f"{'Keras call ms':>14}")
        for batch in (1, 64):
            images = np.random.default_rng(0).integers(0, 256, (batch,) + shape).astype(np.uint8)
            x = images.astype(np.float32)
            tensor = tf.constant(images)
            saved = _median_ms(lambda: served(images=tensor)["probabilities"].numpy(),
                               args.repeats)
            predict = _median_ms(lambda: model.predict(x, verbose=0), args.repeats)
            call = _median_ms(lambda: model(x, training=False).numpy(), args.repeats)
            print(f"{batch:5d} {saved:14.2f} {predict:17.2f} {call:14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
