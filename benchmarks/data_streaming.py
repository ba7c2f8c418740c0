"""Streamed input against input held in memory: peak memory, input throughput, accuracy.

    TFIMB_DATA_DIR=/path/to/cifar10-jpeg python benchmarks/data_streaming.py memory
    TFIMB_DATA_DIR=/path/to/cifar10-jpeg python benchmarks/data_streaming.py throughput
    TFIMB_DATA_DIR=/path/to/cifar10-jpeg python benchmarks/data_streaming.py accuracy

`memory`: the peak resident memory (ru_maxrss of the `tfimb train` process) of one epoch of
ResNet-8 on the image folder, streamed (`data.stream=true`) and in memory (`false`), on the
folder as it is and on the same files listed `--copies` times under other names (symbolic
links in a scratch folder): streamed memory must stay flat as the data grows.

`throughput`: images/s the streamed training pipeline delivers with no model (decode, augment,
batch), read locally and through a tf.data service of N workers started in this process
(`--local-data-workers N`), beside the training throughput of the model alone (in-memory
batches); at the folder's own size (CIFAR: pad-and-crop) and at `--large` pixels (the ImageNet
transforms: random-resized crop to 224 and ResNet-50).

`accuracy`: `configs/cifar10_imbalanced_cpu/imbalanced_ce.yaml` (the CPU protocol: ResNet-20, 10
epochs) trained streamed and in memory with the same seed, and in memory with another seed (the
noise level); prints the three test accuracies. Runs go to `--workdir` and resume.

Every figure is printed beside `tfimb.platform_info.describe()` (CPU model and flags).
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


def _folder_or_exit():
    root = os.environ.get("TFIMB_DATA_DIR")
    if not root or not pathlib.Path(root, "train").is_dir():
        sys.exit("data_streaming.py: set TFIMB_DATA_DIR to an image folder "
                 "(root/{train,test}/<class>/*.jpg).")
    return pathlib.Path(root)


def listed_copies(root, copies, scratch):
    """`root` with every training file listed `copies` times (symbolic links named
    <copy>_<name>); the test split linked as it is."""
    out = pathlib.Path(scratch) / f"x{copies}"
    if out.exists():
        return out
    for class_dir in sorted((root / "train").iterdir()):
        target = out / "train" / class_dir.name
        target.mkdir(parents=True)
        for path in class_dir.iterdir():
            for copy in range(copies):
                (target / f"{copy}_{path.name}").symlink_to(path.resolve())
    (out / "test").symlink_to((root / "test").resolve())
    return out


def peak_rss_run(argv, log):
    """(seconds, peak resident MiB) of a command run to completion; its output to `log`."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{' '.join(argv)} failed ({process.returncode}); see {log}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def memory(args):
    root = _folder_or_exit()
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="tfimb-stream-"))
    print(tfimb.platform_info.describe())
    print(f"one epoch of ResNet-8, batch 128, float32; folder {root}")
    print(f"\n{'training images':>16} {'input':<10} {'peak RSS MiB':>13} {'wall s':>8}")
    try:
        for copies in args.copies:
            folder = root if copies == 1 else listed_copies(root, copies, scratch)
            for stream in ("false", "true"):
                run_dir = scratch / f"run_x{copies}_{stream}"
                config_path = scratch / "resnet8.yaml"
                config_path.write_text(
                    f"data: {{source: folder, dir: {folder}, stream: {stream}}}\n"
                    "imbalance: null\nmodel: {name: resnet8}\nmixed_precision: float32\n"
                    "train: {epochs: 1, batch_size: 128, lr_values: [0.1], lr_boundaries: []}\n")
                argv = [sys.executable, "-m", "tfimb", "train", str(config_path),
                        "--workdir", str(run_dir)]
                seconds, rss = peak_rss_run(argv, scratch / f"x{copies}_{stream}.log")
                counts = json.loads((run_dir / "counts.json").read_text())["counts"]
                print(f"{sum(counts):>16,} {'streamed' if stream == 'true' else 'in memory':<10}"
                      f" {rss:13.0f} {seconds:8.0f}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _input_rate(ds, batches, warmup):
    iterator = iter(ds)
    for _ in range(warmup):
        next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(iterator)
        images += int(x.shape[0])
    return images / (time.perf_counter() - start)


def _model_rate(name, image_size, batch, steps, warmup):
    """Training images/s of the model alone: the same in-memory batch again and again."""
    import keras
    import tensorflow as tf

    from tfimb import config, data, losses
    from tfimb.experiments import classify
    from tfimb.runtime import loop

    cfg = config.resolve({"model": {"name": name}, "mixed_precision": "float32"})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, image_size, image_size, 3), np.uint8)
    labels = rng.integers(0, 10, batch)
    split = data.Split(images, labels)
    dataset = data.Dataset(split, data.Split(images[:0], labels[:0]), split,
                           [str(i) for i in range(10)], 10)
    model = classify.build_model(cfg, dataset)
    trainer = classify.regularized(model, cfg.train.weight_decay)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                    loss=losses.SoftmaxCrossEntropy())
    ds = tf.data.Dataset.from_tensors((images.astype(np.float32), labels)).repeat()
    with tempfile.TemporaryDirectory() as run_dir:
        training = loop.TrainingLoop(trainer, tf.distribute.get_strategy(), run_dir)
        iterator = iter(tf.distribute.get_strategy().experimental_distribute_dataset(ds))
        training.run_steps(iterator, warmup)
        float(trainer.optimizer.iterations.numpy())
        start = time.perf_counter()
        training.run_steps(iterator, steps)
        float(trainer.optimizer.iterations.numpy())
        return steps * batch / (time.perf_counter() - start)


def throughput(args):
    from tfimb import config, data
    from tfimb.data import service

    root = _folder_or_exit()
    print(tfimb.platform_info.describe())
    print(f"folder {root}; batch {args.batch_size}; {args.batches} timed batches after "
          f"{args.warmup}; local service workers run in this process (the same CPUs)")
    print(f"\n{'images':<30} {'input path':<22} {'img/s':>9}")
    rows = [(None, "resnet20"), (args.large, "resnet50")]
    for image_size, model in rows:
        cfg = config.resolve({"data": {"source": "folder", "dir": str(root), "stream": True,
                                       "image_size": image_size}, "imbalance": None})
        train = data.load(cfg.data, None).train
        shape = f"{image_size or 32}px" + (" (random-resized crop)" if image_size else
                                           " (pad-4 crop, flip)")
        local = data.pipeline(train, args.batch_size, True, seed=0, epoch=0)
        print(f"{shape:<30} {'tf.data, this process':<22} "
              f"{_input_rate(local, args.batches, args.warmup):9.0f}", flush=True)
        epoch = data.indexed_epoch(train, args.batch_size, 0, 0)
        for workers in args.workers:
            server = service.Service(workers=workers)
            try:
                rate = _input_rate(service.in_order(epoch, server.address), args.batches,
                                   args.warmup)
            finally:
                server.stop()
            print(f"{shape:<30} {f'tf.data service, {workers} w':<22} {rate:9.0f}", flush=True)
        size = image_size or 32
        steps = args.model_steps if image_size is None else max(2, args.model_steps // 10)
        batch = args.batch_size if image_size is None else 16
        rate = _model_rate(model, size, batch, steps, 2)
        print(f"{shape:<30} {f'{model} training':<22} {rate:9.1f}  (batch {batch}, "
              f"{steps} steps, model only)", flush=True)
    return 0


def accuracy(args):
    _folder_or_exit()
    config_path = REPO / "configs" / "cifar10_imbalanced_cpu" / "imbalanced_ce.yaml"
    runs = {"in memory, seed 0": ["data.stream=false"],
            "streamed, seed 0": ["data.stream=true"],
            "in memory, seed 1": ["data.stream=false", "train.seed=1", "data.seed=1"]}
    print(tfimb.platform_info.describe())
    print(f"{config_path.relative_to(REPO)} (folder $TFIMB_DATA_DIR); runs in {args.workdir}")
    results = {}
    for name, overrides in runs.items():
        run_dir = pathlib.Path(args.workdir) / name.replace(", ", "_").replace(" ", "_")
        if not (run_dir / "results.json").exists():
            argv = [sys.executable, "-m", "tfimb", "train", str(config_path), "--workdir",
                    str(run_dir)]
            for override in overrides:
                argv += ["--set", override]
            if (run_dir / "config.yaml").exists():
                argv.append("--resume")
            subprocess.run(argv, check=True, cwd=REPO)
        results[name] = json.loads((run_dir / "results.json").read_text())
    print(f"\n{'run':<20} {'all':>7} {'majority':>9} {'minority':>9} {'train s':>8}")
    for name, result in results.items():
        acc = result["accuracy"]
        print(f"{name:<20} {100 * acc['all']:7.2f} {100 * acc['majority']:9.2f} "
              f"{100 * acc['minority']:9.2f} {result['train_seconds']:8.0f}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    part = parts.add_parser("memory", help="peak RSS, streamed vs in memory, as the data grows")
    part.add_argument("--copies", type=int, nargs="+", default=[1, 4])
    part.set_defaults(run=memory)
    part = parts.add_parser("throughput", help="input images/s vs model images/s")
    part.add_argument("--batch-size", type=int, default=128)
    part.add_argument("--batches", type=int, default=60)
    part.add_argument("--warmup", type=int, default=5)
    part.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    part.add_argument("--large", type=int, default=224)
    part.add_argument("--model-steps", type=int, default=20)
    part.set_defaults(run=throughput)
    part = parts.add_parser("accuracy", help="streamed vs in-memory test accuracy")
    part.add_argument("--workdir", default="runs/data_streaming")
    part.set_defaults(run=accuracy)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
