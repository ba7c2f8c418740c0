"""Where a training step's time goes: tfimb and PyTorch, per op type, from each one's profiler.

    pip install -e ".[benchmarks]"
    python benchmarks/profile_step.py --model resnet20 --precision bf16
    python benchmarks/profile_step.py --model realnvp --steps 3 --top 15

Each framework runs in its own process (the runners of `benchmarks/compare_frameworks.py`):
warm-up steps, then `--steps` profiled steps. tfimb: `tf.profiler` trace of its training loop,
read from the trace's XPlane (the proto that ships with TensorFlow), summing the kernel events
of the executor threads by op type. PyTorch: `torch.profiler`, self CPU time by aten op. Both
print ms per step by op type and by group (convolution, batch norm, everything else), beside
the step's wall time. Kernel times on parallel executor threads add up, so a framework's op total
can exceed its wall time; the groups compare like with like: convolutions against convolutions.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_frameworks as frameworks  # noqa: E402

CONTAINERS = {"While", "StatelessWhile", "If", "StatelessIf", "PartitionedCall",
              "StatefulPartitionedCall"}
GROUPS = (("convolution", ("conv",)), ("batch norm", ("batchnorm", "batch_norm")))


def group_of(op_type):
    lowered = op_type.lower()
    for group, keys in GROUPS:
        if any(key in lowered for key in keys):
            return group
    return "other"


def build_runner(framework, model, precision, scratch):
    images, labels = frameworks._data(128)
    if model == "realnvp":
        cfg = frameworks._flow_config()
        batch = cfg.train.batch_size
        if framework == "tfimb":
            return frameworks.TfimbFlowRunner(images, batch, scratch), batch
        return frameworks.TorchFlowRunner(images, batch, cfg, channels_last=True), batch
    if framework == "tfimb":
        return frameworks.TfimbRunner(model, precision, images, labels, 128, scratch), 128
    return frameworks.TorchRunner(model, precision, images, labels, 128), 128


def profile_tfimb(runner, steps, scratch):
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    log_dir = os.path.join(scratch, "trace")
    tf.profiler.experimental.start(log_dir)
    seconds = runner.run(steps)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(f"{log_dir}/**/*.xplane.pb", recursive=True))[-1], "rb") as f:
        space.ParseFromString(f.read())
    totals = {}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue  # The executor threads; kernels run (or start their work) there.
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # Kernels are "op_name:OpType"; the
                    continue                          # rest is executor bookkeeping.
                op_type = name.rsplit(":", 1)[1]
                if op_type in CONTAINERS:
                    continue  # Its body's kernels are counted themselves.
                totals[op_type] = totals.get(op_type, 0.0) + event.duration_ps * 1e-9
    return seconds, totals


def profile_torch(runner, steps):
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        seconds = runner.run(steps)
    totals = {}
    for event in prof.key_averages():
        if event.self_cpu_time_total > 0:
            totals[event.key] = event.self_cpu_time_total * 1e-3  # us -> ms
    return seconds, totals


def report(framework, seconds, totals, steps, batch, top):
    per_step = {k: v / steps for k, v in totals.items()}
    print(f"\n{framework}: {1000 * seconds / steps:.1f} ms per step wall time "
          f"({steps * batch / seconds:.1f} img/s while profiled), op total "
          f"{sum(per_step.values()):.1f} ms per step")
    groups = {}
    for op_type, ms in per_step.items():
        groups[group_of(op_type)] = groups.get(group_of(op_type), 0.0) + ms
    for group, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  group {group:<28} {ms:9.1f} ms/step")
    for op_type, ms in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {op_type:<34} {ms:9.1f} ms/step")


def run_one(args):
    with tempfile.TemporaryDirectory() as scratch:
        runner, batch = build_runner(args.framework, args.model, args.precision, scratch)
        runner.run(args.warmup)
        if args.framework == "tfimb":
            print(tfimb.platform_info.describe())
            seconds, totals = profile_tfimb(runner, args.steps, scratch)
        else:
            seconds, totals = profile_torch(runner, args.steps)
    report("tfimb" if args.framework == "tfimb" else "PyTorch", seconds, totals, args.steps,
           batch, args.top)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20",
                        choices=list(frameworks.ARCHITECTURES) + ["realnvp"])
    parser.add_argument("--precision", default="bf16", choices=list(frameworks.PRECISIONS),
                        help="classifiers (RealNVP: float32)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=10, help="op types listed per framework")
    parser.add_argument("--framework", choices=("tfimb", "torch"),
                        help="one framework in this process (default: both, one process each)")
    frameworks.add_flow_arguments(parser)
    args = parser.parse_args(argv)
    frameworks.use_flow_arguments(args)  # Passed on to the subprocesses with the other args.
    if args.framework:
        return run_one(args)
    precision = "float32" if args.model == "realnvp" else args.precision
    print(tfimb.platform_info.describe())
    print(f"{args.model} "
          f"{precision}, {args.steps} profiled steps after {args.warmup} warm-up steps")
    start = time.perf_counter()
    for framework in ("tfimb", "torch"):
        command = [sys.executable, os.path.abspath(__file__), "--framework", framework]
        command += [a for a in (argv if argv is not None else sys.argv[1:])
                    if a != "--framework"]
        code = subprocess.call(command)
        if code:
            return code
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
