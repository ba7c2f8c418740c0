"""Test bits/dim of RealNVP on CIFAR-10 ($TFIMB_DATA_DIR, an image folder) after a CPU time budget.

    python benchmarks/flow_quality.py --minutes 20        # configs/realnvp/cifar10_cpu.yaml

Trains the config's model (`tfimb flow train`'s step; all training images unless the config
caps them) until the wall-clock budget is spent (checked after every step), then evaluates
bits/dim on the config's evaluation images (inference mode, uniform dequantisation) and prints
it with the budget, the steps and the images seen, beside the paper's 3.49.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import yaml  # noqa: E402

import keras  # noqa: E402

from tfimb import config, data  # noqa: E402
from tfimb.experiments import density  # noqa: E402


class Budget(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.steps, self.start = seconds, 0, None

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/realnvp/cifar10_cpu.yaml")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        cfg = config.resolve_flow(yaml.safe_load(f))
    if cfg.data.source == "folder" and not os.path.isdir(cfg.data.dir):
        raise SystemExit(f"{cfg.data.dir} not found: this benchmark needs CIFAR-10 as an "
                         "image folder (set TFIMB_DATA_DIR=PATH).")
    dataset = data.load(cfg.data, None)
    train_images = density._subset(dataset.train, cfg.train.max_train_images, cfg.train.seed)
    eval_images = density._subset(dataset.test, cfg.train.max_eval_images, cfg.train.seed + 1)
    keras.utils.set_random_seed(cfg.train.seed)
    model = density.build_compiled_model(cfg, train_images.shape[1:])
    ds = density.pipeline(train_images, cfg.train.batch_size, True, cfg.train.seed,
                             cfg.train.flip).repeat()
    budget = Budget(args.minutes * 60)
    model.fit(ds, epochs=1, steps_per_epoch=10**9, callbacks=[budget], verbose=0)
    seconds = time.perf_counter() - budget.start
    bpd = density.evaluate_images(model, eval_images, cfg.train.batch_size)
    print(tfimb.platform_info.describe())
    print(f"{args.config} on {cfg.data.dir or cfg.data.name}; {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"budget {args.minutes:g} min (trained {seconds / 60:.1f} min incl. tracing): "
          f"{budget.steps} steps, {budget.steps * cfg.train.batch_size:,} images seen")
    print(f"test bits/dim on {len(eval_images):,} test images: {bpd:.3f}   (paper, full "
          "model and training: 3.49)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
