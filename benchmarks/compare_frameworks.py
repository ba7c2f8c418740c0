"""Training images/second: tfimb's training path beside PyTorch, same models, same machine.

    pip install -e ".[benchmarks]"          # torch==2.13.0 (CPU build)
    python benchmarks/compare_frameworks.py            # ResNets in float32 and bf16, RealNVP
    python benchmarks/compare_frameworks.py --models resnet20 --rounds 2 --steps 10

ResNets. tfimb: `tfimb.experiments.classify.build_trainer` (the model with its normalisation layer, coupled L2
weight decay 5e-4 on every weight, softmax cross-entropy, the group metrics, SGD with momentum
0.9), trained by `tfimb.runtime.loop.TrainingLoop` (the loop of `tfimb train` under every strategy) from
`tfimb.data.pipeline` over uint8 images in memory, without augmentation (as the PyTorch side).
PyTorch: the same architecture in `torch.nn` (3x3 stem, basic blocks with 1x1 projection
shortcuts, global average pooling, dense head; batch-norm eps 1e-5 and momentum 0.1, i.e.
Keras' 0.9), channels-last, the same normalisation as the first op, cross-entropy,
`torch.optim.SGD(momentum=0.9, weight_decay=5e-4)` (coupled L2, the same math), bf16 through
`torch.autocast("cpu")`; batches from tensors in memory.

RealNVP (float32, as `tfimb flow train`): configs/realnvp/cifar10_cpu.yaml's model, batch,
Adam and gradient clipping (or `--flow-config` with `--flow-set` overrides); tfimb through `tfimb.experiments.density.build_model` and the same loop,
PyTorch through `benchmarks/torch_realnvp.py`, the same architecture written in `torch.nn`
(tests/test_flow_compare.py checks that it gives tfimb's log-densities).

Protocol: tfimb and PyTorch each run in their own worker process (neither's thread pools,
allocator or prefetching touch the other's timings). For each model, every (framework,
precision) is built and warmed up first (tracing, oneDNN primitive creation), then `--rounds`
rounds run tfimb and PyTorch alternately (A/B/A/B; the idle worker blocks on a pipe) for
`--steps` timed steps each; the table gives the median img/s of the rounds, the ratio
tfimb / PyTorch and both parameter counts (equal when the architectures are). Random images and
labels (the step time does not depend on the pixels).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

PRECISIONS = {"float32": "float32", "bf16": "mixed_bfloat16"}
ARCHITECTURES = {"resnet20": ((16, 32, 64), 3), "resnet32": ((16, 32, 64), 5),
                 "resnet18_cifar": ((64, 128, 256, 512), 2)}
# The RealNVP comparison trains the CPU-sized flow of `tfimb flow train` (float32: flows train in
# float32) at that config's batch size.
FLOW_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs",
                           "realnvp", "cifar10_cpu.yaml")
FLOW_OVERRIDES: list = []  # `--flow-set KEY=VALUE` (e.g. model.skip_connections=true)


def cpu_model():
    from tfimb import platform_info  # No TensorFlow.

    return platform_info.cpu_model()


# ---------------------------------------------------------------------------------------------
# tfimb


class _LoopRunner:
    """Times steps of `tfimb.runtime.loop.TrainingLoop` over a compiled model and a repeated dataset."""

    def _start(self, model, dataset, run_dir):
        import tensorflow as tf

        from tfimb.runtime import loop

        strategy = tf.distribute.get_strategy()
        self.model = model
        self.loop = loop.TrainingLoop(model, strategy, run_dir)
        self.iterator = iter(strategy.experimental_distribute_dataset(dataset.repeat()))

    def num_parameters(self):
        return sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)

    def run(self, steps):
        start = time.perf_counter()
        self.loop.run_steps(self.iterator, steps)
        int(self.model.optimizer.iterations.numpy())  # Waits for the last step.
        return time.perf_counter() - start


class TfimbRunner(_LoopRunner):
    def __init__(self, name, precision, images, labels, batch, run_dir):
        import keras

        from tfimb import config, data
        from tfimb.experiments import classify

        keras.mixed_precision.set_global_policy(PRECISIONS[precision])
        keras.utils.set_random_seed(0)
        cfg = config.resolve({"model": {"name": name}, "loss": {"name": "softmax_cross_entropy"},
                              "mixed_precision": PRECISIONS[precision]})
        split = data.Split(images, labels)
        dataset = data.Dataset(split, data.Split(images[:0], labels[:0]), split,
                               [str(i) for i in range(10)], 10)
        _, trainer, _ = classify.build_trainer(cfg, dataset, [1, 4, 6])
        keras.mixed_precision.set_global_policy("float32")
        self._start(trainer, data.pipeline(split, batch, training=True, augment=False), run_dir)


class TfimbFlowRunner(_LoopRunner):
    """RealNVP per `FLOW_CONFIG` through `tfimb flow train`'s model, optimizer and loop."""

    def __init__(self, images, batch, run_dir):
        import keras

        from tfimb.experiments import density

        keras.utils.set_random_seed(0)
        cfg = _flow_config()
        model = density.build_compiled_model(cfg, images.shape[1:])
        self._start(model, density.pipeline(images, batch, True, flip=False), run_dir)


# ---------------------------------------------------------------------------------------------
# PyTorch


def torch_model(name, mean, std):
    import torch
    from torch import nn

    def conv_bn(cin, cout, kernel, stride):
        return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True),
                                      *conv_bn(cout, cout, 3, 1))
            self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                             if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    class Normalize(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    stages, blocks = ARCHITECTURES[name]
    layers = [Normalize(), *conv_bn(3, stages[0], 3, 1), nn.ReLU(inplace=True)]
    cin = stages[0]
    for stage, cout in enumerate(stages):
        for block in range(blocks):
            layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


class TorchRunner:
    def __init__(self, name, precision, images, labels, batch):
        import torch

        torch.manual_seed(0)
        x = images.astype(np.float32)
        mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
        self.model = torch_model(name, mean, std).to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9,
                                         weight_decay=5e-4)
        self.loss = torch.nn.CrossEntropyLoss()
        self.bf16 = precision == "bf16"
        self.batches = [
            (torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).contiguous(
                memory_format=torch.channels_last),
             torch.from_numpy(labels[i:i + batch].astype(np.int64)))
            for i in range(0, len(x) - batch + 1, batch)]
        self.position = 0

    def num_parameters(self):
        return sum(p.numel() for p in self.model.parameters())

    def run(self, steps):
        import torch

        start = time.perf_counter()
        for _ in range(steps):
            x, y = self.batches[self.position % len(self.batches)]
            self.position += 1
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.loss(self.model(x), y)
            loss.backward()
            self.optimizer.step()
        float(loss.detach())
        return time.perf_counter() - start


class TorchFlowRunner:
    def __init__(self, images, batch, cfg, channels_last):
        import torch

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import torch_realnvp

        torch.manual_seed(0)
        self.model = torch_realnvp.from_config(cfg.model, images.shape[1:])
        self.training_loss = torch_realnvp.training_loss
        self.l2 = cfg.train.l2
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=memory_format)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.learning_rate,
                                          eps=1e-7)  # Keras' epsilon.
        self.clip_norm = cfg.train.clip_norm
        x = images.astype(np.float32)
        self.batches = [torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).contiguous(
            memory_format=memory_format) for i in range(0, len(x) - batch + 1, batch)]
        self.position = 0

    def num_parameters(self):
        return sum(p.numel() for p in self.model.parameters())

    def run(self, steps):
        import torch

        start = time.perf_counter()
        for _ in range(steps):
            x = self.batches[self.position % len(self.batches)]
            self.position += 1
            self.optimizer.zero_grad(set_to_none=True)
            loss, _ = self.training_loss(self.model, x, self.l2)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
            self.optimizer.step()
        self.last_loss = float(loss.detach())
        return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------


def _data(batch):
    """The same random uint8 images and labels in every process (seeded)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch * 8, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, size=len(images)).astype(np.int32)


def _flow_config():
    import yaml

    from tfimb import config  # No TensorFlow: safe in the PyTorch process.

    with open(FLOW_CONFIG) as f:
        return config.resolve_flow(yaml.safe_load(f), FLOW_OVERRIDES)


def add_flow_arguments(parser):
    parser.add_argument("--flow-config", default=FLOW_CONFIG, help="the RealNVP's flow config")
    parser.add_argument("--flow-set", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides of the RealNVP's config (model.concat_relu=true, ...)")


def use_flow_arguments(args):
    """Point `_flow_config` at --flow-config / --flow-set; the argv that passes them on."""
    global FLOW_CONFIG, FLOW_OVERRIDES
    FLOW_CONFIG, FLOW_OVERRIDES = args.flow_config, list(args.flow_set)
    return ["--flow-config", args.flow_config] + [f"--flow-set={s}" for s in args.flow_set]


def serve(framework, args):
    """A worker process: builds and warms up runners, times steps on request (JSON lines)."""
    images, labels = _data(args.batch_size)
    if framework == "tfimb":
        import tfimb  # First, as users do: it turns oneDNN on before TensorFlow loads.

        import keras
        import tensorflow as tf

        version = (f"tfimb {tfimb.__version__}, TensorFlow {tf.__version__}, "
                   f"Keras {keras.__version__}")
        machine = tfimb.platform_info.describe()
    else:
        import torch

        version = f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)"
        machine = None
    runners = {}
    with tempfile.TemporaryDirectory() as scratch:
        _reply({"version": version, "machine": machine})
        for line in sys.stdin:
            request = json.loads(line)
            key = f"{request['model']}/{request.get('precision')}"
            if request["op"] == "build":
                name, precision = request["model"], request["precision"]
                if name == "realnvp":
                    cfg = _flow_config()
                    batch = cfg.train.batch_size
                    runner = (TfimbFlowRunner(images, batch, os.path.join(scratch, name))
                              if framework == "tfimb" else
                              TorchFlowRunner(images, batch, cfg,
                                              args.torch_flow_layout == "channels_last"))
                elif framework == "tfimb":
                    runner = TfimbRunner(name, precision, images, labels, args.batch_size,
                                         os.path.join(scratch, key.replace("/", "_")))
                else:
                    runner = TorchRunner(name, precision, images, labels, args.batch_size)
                runner.run(args.warmup)
                runners[key] = runner
                _reply({"parameters": runner.num_parameters()})
            elif request["op"] == "run":
                _reply({"seconds": runners[key].run(request["steps"])})
            elif request["op"] == "forget":
                del runners[key]
                _reply({})
    return 0


def _reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Worker:
    """One framework in its own process, so that neither's thread pools or allocator state
    touch the other's timings; it waits on a pipe (no CPU) while the other runs."""

    def __init__(self, framework, argv):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", framework] + argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = self.ask(None)
        self.version, self.machine = hello["version"], hello["machine"]

    def ask(self, request):
        if request is not None:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark worker {self.process.args[-1]} exited "
                               f"(code {self.process.wait()}); see its messages above")
        return json.loads(line)

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES) + ["realnvp"],
                        choices=list(ARCHITECTURES) + ["realnvp"])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                        choices=list(PRECISIONS), help="classifiers (RealNVP: float32)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="classifier batch (RealNVP: its config's batch)")
    parser.add_argument("--torch-flow-layout", choices=("channels_first", "channels_last"),
                        default="channels_last",
                        help="PyTorch RealNVP memory format (channels_last was the faster "
                             "on the development VM: 52 against 40 img/s)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per runner first")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per configuration")
    add_flow_arguments(parser)
    parser.add_argument("--serve", choices=("tfimb", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    flow_argv = use_flow_arguments(args)
    if args.serve:
        return serve(args.serve, args)

    worker_argv = ["--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
                   "--torch-flow-layout", args.torch_flow_layout] + flow_argv
    workers = {"tfimb": Worker("tfimb", worker_argv), "torch": Worker("torch", worker_argv)}
    print(workers["tfimb"].machine)
    print(f"{workers['tfimb'].version}; {workers['torch'].version}; one process each")
    print(f"{args.rounds} rounds of {args.steps} timed steps per framework after {args.warmup} "
          f"warm-up steps, interleaved; batch {args.batch_size} (RealNVP "
          f"{_flow_config().train.batch_size})\n")
    print(f"{'model':<16} {'precision':<10} {'tfimb img/s':>12} {'PyTorch img/s':>14} "
          f"{'tfimb/PyTorch':>14}  parameters (tfimb, PyTorch)")
    try:
        for name in args.models:
            precisions = ["float32"] if name == "realnvp" else args.precisions
            batch = _flow_config().train.batch_size if name == "realnvp" else args.batch_size
            parameters = {}
            for precision in precisions:
                for framework, worker in workers.items():
                    parameters[framework] = worker.ask({"op": "build", "model": name,
                                                        "precision": precision})["parameters"]
            for precision in precisions:
                times = {"tfimb": [], "torch": []}
                request = {"op": "run", "model": name, "precision": precision,
                           "steps": args.steps}
                for _ in range(args.rounds):
                    for framework, worker in workers.items():
                        times[framework].append(worker.ask(request)["seconds"])
                rate = {k: args.steps * batch / statistics.median(v) for k, v in times.items()}
                print(f"{name:<16} {precision:<10} {rate['tfimb']:12.1f} {rate['torch']:14.1f} "
                      f"{rate['tfimb'] / rate['torch']:14.2f}  {parameters['tfimb']:,}, "
                      f"{parameters['torch']:,}", flush=True)
            for precision in precisions:
                for worker in workers.values():
                    worker.ask({"op": "forget", "model": name, "precision": precision})
    finally:
        for worker in workers.values():
            worker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
