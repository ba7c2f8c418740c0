"""RealNVP in tfimb against the same architecture in PyTorch: test bits/dim after a fixed number
of training images (or minutes), and training images/s, one run per framework, one after the
other on the same machine.

    TFIMB_DATA_DIR=/path/to/cifar10-jpeg python benchmarks/flow_compare.py \\
        --images 35584 --set model.normalization=none --out benchmarks/results/flow_compare/X.json
    python benchmarks/flow_compare.py --minutes 30 ...            # equal wall time instead
    python benchmarks/flow_compare.py --frameworks tfimb ...      # one arm only

The model and training come from `--config` (default configs/realnvp/peer_size.yaml: the size
of issue 34's comparison, 2 scales, 4 blocks, 32 maps, batch 64, Adam 1e-3, flips) with
`--set key=value` overrides, as `tfimb flow train` takes them. tfimb trains with
`tfimb flow train`'s model and step (`model.fit` on its tf.data pipeline); PyTorch with
`torch_realnvp.RealNVP`, the same layers, initialisation, losses and optimizer settings, in eager
mode, NCHW, batches drawn from the same uint8 array with NumPy flips. Both train on all training
images (or `train.max_train_images`) and are evaluated on the same fixed random test subset
(`--eval-images`, default 2,000) in inference mode. Each arm runs in a subprocess of its own.

Prints the CPU, each arm's parameters, images seen, training wall time, img/s (steady: after
the first `--warmup` steps, which absorb tracing; and overall), train bits/dim over the last 50
steps and test bits/dim; `--out FILE` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE.parent / "configs" / "realnvp" / "peer_size.yaml"


def _load(args):
    """(resolved FlowConfig, train images, fixed eval images), uint8 NHWC."""
    import yaml
    from tfimb import config, data
    from tfimb.experiments import density

    with open(args.config) as f:
        cfg = config.resolve_flow(yaml.safe_load(f), args.set)
    if cfg.data.source == "folder" and not os.path.isdir(cfg.data.dir or ""):
        raise SystemExit(f"{cfg.data.dir} not found: this benchmark needs CIFAR-10 as an image "
                         "folder (set TFIMB_DATA_DIR=PATH).")
    dataset = data.load(cfg.data, None, stream=False)
    train = density._subset(dataset.train, cfg.train.max_train_images, cfg.train.seed)
    test = density._subset(dataset.test, args.eval_images, 12345)
    return cfg, train, test


class _Clock:
    """Training wall time, images seen and the steady rate (after `warmup` steps)."""

    def __init__(self, batch, warmup, max_images, seconds):
        self.batch, self.warmup, self.max_images, self.seconds = batch, warmup, max_images, seconds
        self.steps, self.start, self.steady_start, self.losses = 0, time.perf_counter(), None, []

    def tick(self, bpd):
        self.steps += 1
        self.losses = (self.losses + [float(bpd)])[-50:]
        if self.steps == self.warmup:
            self.steady_start = time.perf_counter()
        return self.done()

    def done(self):
        return (self.steps * self.batch >= self.max_images
                or time.perf_counter() - self.start >= self.seconds)

    def summary(self):
        end = time.perf_counter()
        steady_steps = self.steps - self.warmup
        return {"steps": self.steps, "images": self.steps * self.batch,
                "train_seconds": end - self.start,
                "img_per_s": self.steps * self.batch / (end - self.start),
                "steady_img_per_s": (steady_steps * self.batch / (end - self.steady_start)
                                     if self.steady_start and steady_steps > 0 else None),
                "train_bits_per_dim_last50": sum(self.losses) / max(len(self.losses), 1)}


def _run_tfimb(args, cfg, train, test):
    import keras
    import tensorflow as tf
    from tfimb.experiments import density

    keras.utils.set_random_seed(cfg.train.seed)
    model = density.build_compiled_model(cfg, train.shape[1:])
    ds = density.pipeline(train, cfg.train.batch_size, True, cfg.train.seed,
                          cfg.train.flip).repeat()
    clock = _Clock(cfg.train.batch_size, args.warmup, args.images, args.minutes * 60)

    class Stop(keras.callbacks.Callback):
        total = 0.0  # Sum of the steps' bits/dim so far.

        def on_train_batch_end(self, batch, logs=None):
            # logs["bits_per_dim"] is the running mean over the (single) epoch: the step's own
            # value is the difference of the running sums.
            total = logs["bits_per_dim"] * (clock.steps + 1)
            step_bpd, Stop.total = total - Stop.total, total
            if clock.tick(step_bpd):
                self.model.stop_training = True

    clock.start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=10**9, callbacks=[Stop()], verbose=0)
    result = clock.summary()
    result["parameters"] = int(sum(int(tf.size(w)) for w in model.trainable_weights))
    result["test_bits_per_dim"] = density.evaluate_images(model, test, 250)
    return result


def _run_torch(args, cfg, train, test):
    import numpy as np
    import torch
    sys.path.insert(0, str(HERE))
    import torch_realnvp

    torch.manual_seed(cfg.train.seed)
    model = torch_realnvp.from_config(cfg.model, train.shape[1:])
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Keras' Adam: default betas, epsilon 1e-7; L2 on the weight-norm scales in the loss.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate, eps=1e-7)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    rng = np.random.default_rng(cfg.train.seed)
    batch = cfg.train.batch_size
    clock = _Clock(batch, args.warmup, args.images, args.minutes * 60)
    model.train()
    clock.start = time.perf_counter()
    while not clock.done():
        order = rng.permutation(len(train))
        for start in range(0, len(order) - batch + 1, batch):
            images = train[order[start:start + batch]]
            if cfg.train.flip:
                flip = rng.random(batch) < 0.5
                images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(
                memory_format=layout)
            loss, bpd = torch_realnvp.training_loss(model, x, cfg.train.l2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
            optimizer.step()
            if clock.tick(bpd.item()):
                break
    result = clock.summary()
    result["parameters"] = int(sum(p.numel() for p in model.parameters()))
    model.eval()
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        values = [model.bits_per_dim(torch.from_numpy(np.ascontiguousarray(
            test[i:i + 250].transpose(0, 3, 1, 2))), generator=generator)
            for i in range(0, len(test), 250)]
    result["test_bits_per_dim"] = float(torch.cat(values).mean())
    result["torch"] = torch.__version__
    result["threads"] = torch.get_num_threads()
    result["channels_last"] = args.channels_last
    return result


def _arm(args):
    """One framework in this process: print its result as one JSON line."""
    import tfimb  # noqa: F401  (first: oneDNN settings before TensorFlow loads)
    cfg, train, test = _load(args)
    run = _run_tfimb if args.arm == "tfimb" else _run_torch
    result = run(args, cfg, train, test)
    result.update(framework=args.arm, eval_images=len(test), train_images=len(train))
    print("RESULT " + json.dumps(result), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--images", type=int, default=35584, help="training images per arm")
    parser.add_argument("--minutes", type=float, default=float("inf"),
                        help="training wall-time budget per arm (whichever comes first)")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=5, help="steps before the steady rate")
    parser.add_argument("--frameworks", nargs="+", default=["tfimb", "torch"],
                        choices=["tfimb", "torch"])
    parser.add_argument("--channels-last", action="store_true",
                        help="PyTorch arm in channels-last memory format (default: NCHW "
                             "contiguous, PyTorch's default and the peer's)")
    parser.add_argument("--out", help="write the results here as JSON")
    parser.add_argument("--arm", choices=["tfimb", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        return _arm(args)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tfimb
    results = {"platform": tfimb.platform_info.describe(), "machine": platform.machine(),
               "cpus": os.cpu_count(), "config": args.config, "set": args.set,
               "images": args.images, "minutes": args.minutes, "arms": {}}
    print(results["platform"], flush=True)
    base = [sys.executable, __file__, "--config", args.config, "--images", str(args.images),
            "--minutes", str(args.minutes), "--eval-images", str(args.eval_images),
            "--warmup", str(args.warmup)] + [f"--set={s}" for s in args.set] + (
                ["--channels-last"] if args.channels_last else [])
    for framework in args.frameworks:
        out = subprocess.run(base + ["--arm", framework], capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"the {framework} arm failed (exit {out.returncode})")
        results["arms"][framework] = json.loads(lines[-1][len("RESULT "):])
    print(f"{'framework':>10} {'parameters':>11} {'images':>7} {'train s':>8} {'img/s':>7} "
          f"{'steady':>7} {'train bpd':>9} {'test bpd':>9}")
    for name, r in results["arms"].items():
        steady = r["steady_img_per_s"] or float("nan")
        print(f"{name:>10} {r['parameters']:>11,} {r['images']:>7,} {r['train_seconds']:>8.0f} "
              f"{r['img_per_s']:>7.1f} {steady:>7.1f} {r['train_bits_per_dim_last50']:>9.3f} "
              f"{r['test_bits_per_dim']:>9.3f}")
    if len(results["arms"]) == 2:
        ratio = (results["arms"]["tfimb"]["steady_img_per_s"]
                 / results["arms"]["torch"]["steady_img_per_s"])
        print(f"tfimb / PyTorch steady img/s: {ratio:.2f}x")
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, path)  # Never a half-written result.
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
