"""Whole runs, not model steps: `tfimb train` against a PyTorch script of the same protocol.

    python benchmarks/compare_end_to_end.py --data DIR [--epochs 3] [--rounds 2]

Both run the CIFAR-10-LT protocol (configs/cifar10_lt/ce_r100.yaml: 12,406 training images at
imbalance ratio 100, ResNet-32, batch 128, SGD momentum 0.9 with coupled weight decay 2e-4,
pad-4 crop and flip, float32, evaluation on the 10,000 test images after every epoch) on the
same JPEG folder for a few epochs, each in its own process, one after the other and
interleaved over rounds (tfimb, PyTorch, tfimb, PyTorch, ...) so that a change in the machine's
load touches both. The PyTorch side is `benchmarks/torch_cifar10_lt.py`, written as the field's
scripts are (Dataset + DataLoader workers with per-image transforms).

Printed per framework (medians over rounds): start-up (interpreter, imports, reading and
decoding the folder, building the model), the first epoch (tracing and warm-up included), the
median of the later epochs (each: input, training, evaluation), the whole process's wall time
and that divided by the epochs; then the ratios tfimb / PyTorch (below 1: tfimb is faster).
Each figure is printed beside the CPU model, its flags and the oneDNN state.
"""

import argparse
import csv
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cifar10_lt" / "ce_r100.yaml"


def run_tfimb(data, epochs, scratch):
    run_dir = pathlib.Path(scratch) / f"tfimb-{time.time_ns()}"
    command = [sys.executable, "-m", "tfimb", "train", str(CONFIG), "--workdir", str(run_dir),
               "--set", "data.source=folder", "--set", f"data.dir={data}",
               "--set", f"train.epochs={epochs}", "--set", "evaluation.interval=1",
               "--set", "mixed_precision=float32"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT,
                   env=_env())
    total = time.perf_counter() - start
    with open(run_dir / "history.csv") as f:
        epochs_s = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
    results = json.loads((run_dir / "results.json").read_text())
    return {"total": total, "epochs": epochs_s, "accuracy": results["accuracy"]["all"]}


def run_torch(data, epochs, workers):
    command = [sys.executable, str(ROOT / "benchmarks" / "torch_cifar10_lt.py"),
               "--data", str(data), "--epochs", str(epochs), "--workers", str(workers)]
    start = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=_env())
    total = time.perf_counter() - start
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    epochs_s = [line["seconds"] for line in lines if "epoch" in line]
    return {"total": total, "epochs": epochs_s, "accuracy": lines[-1]["test_accuracy"]}


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))


def summary(runs, epochs):
    """Medians over rounds of start-up (+ tfimb's final test and saving), first and later
    epochs, total and total per epoch."""
    def median(values):
        return statistics.median(values)

    first = median([r["epochs"][0] for r in runs])
    later = median([median(r["epochs"][1:]) for r in runs]) if epochs > 1 else float("nan")
    total = median([r["total"] for r in runs])
    other = median([r["total"] - sum(r["epochs"]) for r in runs])
    return {"other": other, "first": first, "later": later, "total": total,
            "per_epoch": total / epochs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 image folder root/{train,test}/")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-workers", type=int, default=2,
                        help="DataLoader worker processes of the PyTorch script")
    args = parser.parse_args(argv)
    machine = subprocess.run(
        [sys.executable, "-m", "tfimb", "info"], check=True, capture_output=True, text=True,
        cwd=ROOT, env=_env()).stdout.strip()
    print(machine)
    print(f"{CONFIG.relative_to(ROOT)}, {args.epochs} epochs with test evaluation after each, "
          f"float32, {args.rounds} interleaved rounds; PyTorch DataLoader workers: "
          f"{args.torch_workers}\n", flush=True)
    runs = {"tfimb": [], "PyTorch": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            runs["tfimb"].append(run_tfimb(args.data, args.epochs, scratch))
            runs["PyTorch"].append(run_torch(args.data, args.epochs, args.torch_workers))
            for name in runs:
                r = runs[name][-1]
                print(f"round {round_ + 1} {name:<8} total {r['total']:7.1f} s, epochs "
                      f"{', '.join(f'{s:.1f}' for s in r['epochs'])} s, test accuracy "
                      f"{100 * r['accuracy']:.2f}%", flush=True)
    stats = {name: summary(r, args.epochs) for name, r in runs.items()}
    print(f"\n{'':<10} {'start-up+end s':>15} {'epoch 1 s':>10} {'later epochs s':>15} "
          f"{'total s':>9} {'total/epoch s':>14}")
    for name, s in stats.items():
        print(f"{name:<10} {s['other']:15.1f} {s['first']:10.1f} {s['later']:15.1f} "
              f"{s['total']:9.1f} {s['per_epoch']:14.1f}")
    t, p = stats["tfimb"], stats["PyTorch"]
    print(f"{'tfimb/PyT':<10} {t['other'] / p['other']:15.2f} {t['first'] / p['first']:10.2f} "
          f"{t['later'] / p['later']:15.2f} {t['total'] / p['total']:9.2f} "
          f"{t['per_epoch'] / p['per_epoch']:14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
