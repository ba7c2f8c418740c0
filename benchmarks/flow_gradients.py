"""At a RealNVP's start: its bits/dim gradient against the L2 penalty's on the weight-norm scales.

    TFIMB_DATA_DIR=/path/to/cifar10-jpeg python benchmarks/flow_gradients.py [--set KEY=VALUE ...]

Builds `configs/realnvp/peer_size.yaml` (with the overrides) as `tfimb flow train` does, takes
64 training images of the CIFAR-10 image folder (every 700th file), and prints the batch's
bits/dim, the L2 penalty, the global norm of the bits/dim gradient (and in nats, D ln 2 times
larger: the unit of a loss in nats, as the public PyTorch RealNVP's), and, per weight-norm scale
g, |d bpd / d g| against |d penalty / d g|: how many scales the penalty pulls harder than the
data. Training mode, uniform dequantisation from a fixed seed.
"""

import argparse
import glob
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from tfimb import config  # noqa: E402
from tfimb.experiments import density  # noqa: E402
from tfimb.flows import preprocessing  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(HERE, os.pardir, "configs", "realnvp",
                                                         "peer_size.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    folder = os.environ.get("TFIMB_DATA_DIR", "")
    files = sorted(glob.glob(os.path.join(folder, "train", "*", "*")))[::700][:64]
    if len(files) < 64:
        raise SystemExit(f"TFIMB_DATA_DIR={folder!r}: expected a CIFAR-10 image folder with "
                         "train/CLASS/IMAGE files.")
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    with open(args.config) as f:
        cfg = config.resolve_flow(yaml.safe_load(f), args.set)
    model = density.build_model(cfg, images.shape[1:])
    scales = model.weight_norm_scales()
    with tf.GradientTape(persistent=True) as tape:
        log_px, _ = model._log_px(images, True, "uniform", [1, 2])
        bpd = tf.reduce_mean(preprocessing.bits_per_dim(log_px, model.num_dims))
        penalty = model.l2 * tf.add_n([tf.reduce_sum(tf.square(g)) for g in scales])
    norm = float(tf.linalg.global_norm(tape.gradient(bpd, model.trainable_weights)))
    data = np.concatenate([np.abs(g.numpy()) for g in tape.gradient(bpd, scales)])
    pull = np.concatenate([np.abs(g.numpy()) for g in tape.gradient(penalty, scales)])
    print(tfimb.platform_info.describe())
    print(f"{args.config} {' '.join(args.set)}: {len(data):,} weight-norm scales, "
          f"train.l2={model.l2:g}")
    print(f"bits/dim {float(bpd):.3f}, L2 penalty {float(penalty):.4f}")
    print(f"global norm of the bits/dim gradient {norm:.1f} "
          f"(in nats: {norm * model.num_dims * math.log(2):,.0f}); train.clip_norm "
          f"{cfg.train.clip_norm:g}")
    print(f"|d bpd/d g| median {np.median(data):.2e}, mean {data.mean():.2e}; "
          f"|d penalty/d g| median {np.median(pull):.2e}")
    print(f"scales the penalty pulls harder than the data: {(pull > data).mean():.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
