"""RealNVP images/second: training, sampling and encoding, for a flow config (CPU-sized default).

    python benchmarks/flow_throughput.py                                  # configs/realnvp/cifar10_cpu.yaml
    python benchmarks/flow_throughput.py --config configs/realnvp/cifar10.yaml --steps 5

Training: `model.fit` steps of `tfimb flow train`'s step (dequantisation, logit, the flow in
training mode, Adam with clipping, batch-norm updates) on random uint8 images in memory, timed
after warm-up steps that absorb tracing. Sampling: `sample` (decode of z ~ N(0, I), inference
mode) and encoding: `encode` (uint8 -> z), each in a tf.function, batch = the config's batch.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from tfimb import config  # noqa: E402
from tfimb.experiments import density  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/realnvp/cifar10_cpu.yaml")
    parser.add_argument("--image-shape", type=int, nargs=3, default=[32, 32, 3])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        cfg = config.resolve_flow(yaml.safe_load(f))
    batch = cfg.train.batch_size
    shape = tuple(args.image_shape)
    images = np.random.default_rng(0).integers(0, 256, (batch * (args.steps + args.warmup),)
                                               + shape).astype(np.uint8)
    model = density.build_compiled_model(cfg, shape)
    ds = density.pipeline(images, batch, True, flip=cfg.train.flip).repeat()
    print(tfimb.platform_info.describe())
    print(f"{args.config}: {sum(int(np.prod(w.shape)) for w in model.trainable_weights):,} "
          f"parameters, images {shape}, batch {batch}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, TF {tf.__version__}")

    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.warmup, verbose=0)
    print(f"tracing + {args.warmup} warm-up steps: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    train_rate = args.steps * batch / (time.perf_counter() - start)

    sample = tf.function(lambda seed: model.decode(tf.random.stateless_normal((batch,) + shape,
                                                                               seed)))
    encode = tf.function(model.encode)
    rates = {}
    for name, fn, arg in (("sampling", sample, lambda i: tf.constant([i, 0])),
                          ("encoding", encode, lambda i: tf.constant(images[i * batch:
                                                                            (i + 1) * batch]))):
        fn(arg(0))  # Trace.
        start = time.perf_counter()
        for i in range(args.steps):
            fn(arg(i)).numpy()
        rates[name] = args.steps * batch / (time.perf_counter() - start)
    print(f"\n{'training img/s':>16} {'sampling img/s':>16} {'encoding img/s':>16}")
    print(f"{train_rate:16.1f} {rates['sampling']:16.1f} {rates['encoding']:16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
