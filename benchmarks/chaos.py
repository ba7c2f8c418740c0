"""Chaos: a job of three runs interrupted N times at random moments, resumed after each.

The job is one `tfimb train` of a config with three variants (cross-entropy, class-balanced
softmax, focal; ResNet-8 on the digits shipped with tfimb, a checkpoint every 3 steps). The
driver starts it, sends SIGINT, SIGTERM or SIGKILL (picked at random) after a random delay,
waits for the process to end, and starts it again: with the command the one-line message
printed (SIGINT, SIGTERM), or, after SIGKILL, which prints nothing, with `--resume` when the job
has a run to resume. Once N interruptions are done, the job runs to its end. Then every run's
files are compared with those of the same job run without interruption:

* `results.json`: every value but the wall-time ones (train_seconds, images_per_second) equal;
* `history.csv`: every column but epoch_seconds identical, row for row;
* `counts.json`: identical;
* `model.keras`: weights within float tolerance (relative 1e-5 of each tensor's norm).

and every SIGINT / SIGTERM must have ended the process with one line on stderr (`tfimb: ...`,
no traceback) and status 130 / 143. Prints the CPU, the interruptions by signal, the resumes,
and the verdict; exits 1 if anything was lost.

    python benchmarks/chaos.py --interruptions 30 --seed 0     # about 15-25 min on 2 cores

tests/test_chaos.py runs a short version (one SIGTERM, one SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

JOB_YAML = """\
# The chaos job: three short runs in one command (benchmarks/chaos.py).
data: {{source: digits}}
imbalance: {{minority: [1, 4, 6], minority_count: 7, majority_count: 25}}
model: {{name: resnet8}}
train: {{epochs: {epochs}, batch_size: 28, lr_values: [0.01, 0.001], lr_boundaries: [2],
        checkpoint_every: 3}}
mixed_precision: float32
variants:
  - {{name: ce, loss: {{name: softmax_cross_entropy}}}}
  - {{name: cb_softmax, loss: {{name: class_balanced_softmax, beta: 0.999}}}}
  - {{name: focal, loss: {{name: focal, gamma: 1.0}}}}
"""
RUNS = ("ce", "cb_softmax", "focal")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
WALL_TIME_KEYS = {"train_seconds", "images_per_second", "epoch_seconds"}


def _env() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def tfimb_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tfimb", *args]


def finished(job: pathlib.Path) -> bool:
    return all((job / run / "results.json").exists() for run in RUNS)


def resumable(job: pathlib.Path) -> bool:
    """Whether a run of the job has started (its config.yaml) and not finished."""
    return any((job / run / "config.yaml").exists() and not (job / run / "results.json").exists()
               for run in RUNS)


def run_uninterrupted(root: pathlib.Path, config: pathlib.Path) -> pathlib.Path:
    job = root / "uninterrupted"
    done = subprocess.run(tfimb_command(["train", str(config), "--workdir", str(job)]),
                          cwd=root, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the uninterrupted job failed:\n{done.stderr[-3000:]}")
    return job


def run_interrupted(root: pathlib.Path, config: pathlib.Path, interruptions: int,
                    rng: random.Random, delay: tuple[float, float], log=print,
                    signals: list[int] | None = None) -> dict:
    """The job, interrupted `interruptions` times, then finished; the tally. The signals are
    drawn at random, or taken in turn from `signals`."""
    job = root / "interrupted"
    base = ["train", str(config), "--workdir", str(job)]
    command = list(base)
    tally = {"interruptions": 0, "by_signal": {}, "resumes": 0, "bad_endings": [],
             "finished_before_signal": 0}
    while True:
        process = subprocess.Popen(tfimb_command(command), cwd=root, env=_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if tally["interruptions"] < interruptions:
            wait = rng.uniform(*delay)
            signum = (signals[tally["interruptions"] % len(signals)] if signals
                      else rng.choice(SIGNALS))
            try:
                process.wait(wait)
            except subprocess.TimeoutExpired:
                process.send_signal(signum)
        else:
            signum = None
        _, err = process.communicate()
        code = process.returncode
        if code == 0:
            if signum is not None and tally["interruptions"] < interruptions:
                tally["finished_before_signal"] += 1
            if finished(job):
                return tally
            command = list(base) + (["--resume"] if resumable(job) else [])
            continue
        if signum is None:
            raise SystemExit(f"the job failed without a signal (status {code}):\n{err[-3000:]}")
        tally["interruptions"] += 1
        name = signal.Signals(signum).name
        tally["by_signal"][name] = tally["by_signal"].get(name, 0) + 1
        lines = [line for line in err.strip().splitlines() if line.startswith("tfimb: ")]
        if signum == signal.SIGKILL:
            if code != -signal.SIGKILL:
                tally["bad_endings"].append(f"SIGKILL: status {code}")
            command = list(base) + (["--resume"] if resumable(job) else [])
        else:
            expected = 128 + signum
            if code != expected or "Traceback" in err or not lines:
                tally["bad_endings"].append(f"{name}: status {code} (expected {expected}): "
                                            f"{err.strip()[-500:]}")
                command = list(base) + (["--resume"] if resumable(job) else [])
            else:
                hint = lines[-1]
                if "Continue with: tfimb " in hint:
                    command = shlex.split(hint.split("Continue with: tfimb ", 1)[1])
                else:
                    command = list(base)  # "No unfinished run": start it.
        tally["resumes"] += 1
        log(f"  interruption {tally['interruptions']}: {name} after {wait:.1f} s, status "
            f"{code}; next: tfimb {' '.join(command)}")


def _weights(path: pathlib.Path) -> list[np.ndarray]:
    import keras

    import tfimb

    tfimb.register_all()
    return keras.saving.load_model(path, compile=False).get_weights()


def compare(reference: pathlib.Path, job: pathlib.Path) -> list[str]:
    """What differs between the two jobs' runs (empty: nothing lost)."""
    import csv

    problems = []
    for run in RUNS:
        a, b = reference / run, job / run
        results = [json.loads((d / "results.json").read_text()) for d in (a, b)]
        for key in sorted(set(results[0]) | set(results[1])):
            if key not in WALL_TIME_KEYS and results[0].get(key) != results[1].get(key):
                problems.append(f"{run}: results.json {key}: {results[0].get(key)!r} != "
                                f"{results[1].get(key)!r}")
        rows = []
        for d in (a, b):
            with open(d / "history.csv", newline="") as f:
                rows.append([{k: v for k, v in row.items() if k not in WALL_TIME_KEYS}
                             for row in csv.DictReader(f)])
        if rows[0] != rows[1]:
            problems.append(f"{run}: history.csv differs")
        if (a / "counts.json").read_text() != (b / "counts.json").read_text():
            problems.append(f"{run}: counts.json differs")
        for i, (wa, wb) in enumerate(zip(_weights(a / "model.keras"),
                                         _weights(b / "model.keras"))):
            if np.linalg.norm(wa - wb) > 1e-5 * np.linalg.norm(wa) + 1e-7:
                problems.append(f"{run}: weight tensor {i} differs by "
                                f"{np.linalg.norm(wa - wb):.3g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interruptions", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=120, help="epochs per run (default 120)")
    parser.add_argument("--delay", type=float, nargs=2, default=(2.0, 14.0),
                        metavar=("MIN", "MAX"), help="seconds from a start to its signal")
    parser.add_argument("--workdir", help="where the two jobs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before TensorFlow loads (weights).
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from tfimb import platform_info

    print(platform_info.describe())
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="tfimb-chaos-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = root / "job.yaml"
    config.write_text(JOB_YAML.format(epochs=args.epochs))
    start = time.monotonic()
    print(f"uninterrupted job in {root / 'uninterrupted'} ...", flush=True)
    reference = run_uninterrupted(root, config)
    print(f"  {time.monotonic() - start:.0f} s", flush=True)
    start = time.monotonic()
    print(f"interrupted job in {root / 'interrupted'}: {args.interruptions} interruptions, "
          f"seed {args.seed} ...", flush=True)
    tally = run_interrupted(root, config, args.interruptions, random.Random(args.seed),
                            tuple(args.delay), log=lambda line: print(line, flush=True))
    print(f"  {time.monotonic() - start:.0f} s", flush=True)
    problems = compare(reference, root / "interrupted") + tally["bad_endings"]
    by_signal = ", ".join(f"{k} {v}" for k, v in sorted(tally["by_signal"].items()))
    print(f"interruptions survived: {tally['interruptions']} ({by_signal}); resumes: "
          f"{tally['resumes']}; signals that came after the job had ended: "
          f"{tally['finished_before_signal']}")
    if problems:
        print("LOST: " + "; ".join(problems))
        return 1
    if tally["interruptions"] < args.interruptions:
        print(f"nothing lost, but the job ended after {tally['interruptions']} of the "
              f"{args.interruptions} interruptions asked: raise --epochs")
        return 1
    print(f"final results.json of all {len(RUNS)} runs equal the uninterrupted job's "
          "(weights within 1e-5 relative; history, counts and every other result identical); "
          "every SIGINT / SIGTERM ended in one line with status 130 / 143: nothing lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
