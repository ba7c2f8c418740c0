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
Adam and gradient clipping; tfimb through `tfimb.experiments.density.build_model` and the same loop,
PyTorch through `torch_realnvp`, the same architecture written in `torch.nn`.

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
import math
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


def torch_realnvp(image_shape, num_scales, num_blocks, num_filters, momentum, epsilon, alpha,
                  l2):
    """tfimb's RealNVP (`tfimb/flows/realnvp.py`) in `torch.nn`, data -> latent, NCHW.

    Couplings: s/t ResNets of weight-normalised 3x3 convolutions (v ~ N(0, 0.05^2), g = 1,
    zero bias) with pre-activation batch norm (Keras' defaults: eps 1e-3, momentum 0.99) and
    ReLU, `s = scale * tanh(raw s)`; each coupling followed by the running batch-norm bijector
    (momentum-blended batch statistics, eps `epsilon`); checkerboard then squeeze (channel
    4c + 2dy + dx), channel couplings, factor-out of half the channels; logit preprocessing
    with uniform dequantisation; loss = mean bits/dim + l2 * sum(g^2)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class WeightNormConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.v = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.05)
            self.g = nn.Parameter(torch.ones(cout))
            self.bias = nn.Parameter(torch.zeros(cout))

        def forward(self, x):
            norm = torch.sqrt(self.v.square().sum(dim=(1, 2, 3)) + 1e-12)
            return F.conv2d(x, self.v * (self.g / norm).view(-1, 1, 1, 1), self.bias,
                            padding=1)

    def batch_norm(channels):
        return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)

    class CouplingNetwork(nn.Module):
        def __init__(self, channels, filters):
            super().__init__()
            self.channels = channels
            self.stem = WeightNormConv(channels, filters)
            self.blocks = nn.ModuleList(
                nn.ModuleList([batch_norm(filters), WeightNormConv(filters, filters),
                               batch_norm(filters), WeightNormConv(filters, filters)])
                for _ in range(num_blocks))
            self.out_bn = batch_norm(filters)
            self.out = WeightNormConv(filters, 2 * channels)
            self.scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

        def forward(self, x):
            h = self.stem(x)
            for bn1, conv1, bn2, conv2 in self.blocks:
                h = h + conv2(torch.relu(bn2(conv1(torch.relu(bn1(h))))))
            raw = self.out(torch.relu(self.out_bn(h)))
            return self.scale * torch.tanh(raw[:, :self.channels]), raw[:, self.channels:]

    class Coupling(nn.Module):
        """Affine coupling (data -> latent) followed by the running batch-norm bijector."""

        def __init__(self, mask, parity, channels, height, width, filters):
            super().__init__()
            if mask == "checkerboard":
                rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width),
                                            indexing="ij")
                b = ((rows + cols + parity) % 2).float().view(1, 1, height, width)
            else:
                first = (torch.arange(channels) < channels // 2)
                b = (first if parity == 0 else ~first).float().view(1, channels, 1, 1)
            self.register_buffer("b", b)
            self.network = CouplingNetwork(channels, filters)
            self.register_buffer("moving_mean", torch.zeros(channels))
            self.register_buffer("moving_variance", torch.ones(channels))

        def forward(self, x):
            b = self.b
            s, t = self.network(b * x)
            s, t = (1 - b) * s, (1 - b) * t
            y = b * x + (1 - b) * (x * torch.exp(s) + t)
            log_det = s.sum(dim=(1, 2, 3))
            mean = (momentum * self.moving_mean
                    + (1 - momentum) * y.mean(dim=(0, 2, 3)))
            variance = (momentum * self.moving_variance
                        + (1 - momentum) * y.var(dim=(0, 2, 3), unbiased=False))
            with torch.no_grad():
                self.moving_mean.copy_(mean)
                self.moving_variance.copy_(variance)
            y = (y - mean.view(1, -1, 1, 1)) * torch.rsqrt(variance + epsilon).view(1, -1, 1, 1)
            log_det = log_det - 0.5 * y.shape[2] * y.shape[3] * torch.log(variance + epsilon).sum()
            return y, log_det

    def squeeze(x):  # [B, C, H, W] -> [B, 4C, H/2, W/2], channel 4c + 2dy + dx
        n, c, h, w = x.shape
        x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(n, 4 * c, h // 2, w // 2)

    def unsqueeze(x):
        n, c4, h, w = x.shape
        x = x.view(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(n, c4 // 4, 2 * h, 2 * w)

    class RealNVP(nn.Module):
        def __init__(self):
            super().__init__()
            h, w, c = image_shape
            self.num_dims = h * w * c
            self.scales = nn.ModuleList()
            for k in range(num_scales):
                filters, final = num_filters * 2 ** k, k == num_scales - 1
                steps = [Coupling("checkerboard", p, c, h, w, filters)
                         for p in ((0, 1, 0, 1) if final else (0, 1, 0))]
                if not final:
                    steps += [Coupling("channel", p, 4 * c, h // 2, w // 2, filters)
                              for p in (0, 1, 0)]
                self.scales.append(nn.ModuleList(steps))
                h, w, c = h // 2, w // 2, 2 * c

        def to_latent(self, x, k=0):
            log_det = 0.0
            for i, coupling in enumerate(self.scales[k]):
                if i == 3 and k < len(self.scales) - 1:
                    x = squeeze(x)
                x, step_log_det = coupling(x)
                log_det = log_det + step_log_det
            if k < len(self.scales) - 1:
                keep = x.shape[1] // 2
                inner, inner_log_det = self.to_latent(x[:, :keep], k + 1)
                x = unsqueeze(torch.cat([inner, x[:, keep:]], dim=1))
                log_det = log_det + inner_log_det
            return x, log_det

        def loss(self, images):
            x = (images + torch.rand_like(images)) / 256.0
            p = alpha + (1 - 2 * alpha) * x
            log_p, log_1mp = torch.log(p), torch.log1p(-p)
            logit_log_det = (math.log(1 - 2 * alpha) - log_p - log_1mp).sum(dim=(1, 2, 3))
            z, log_det = self.to_latent(log_p - log_1mp)
            log_pz = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(dim=(1, 2, 3))
            log_px = log_pz + log_det + logit_log_det
            bpd = (-log_px + self.num_dims * math.log(256.0)) / (self.num_dims * math.log(2.0))
            penalty = sum(m.g.square().sum() for m in self.modules()
                          if isinstance(m, WeightNormConv))
            return bpd.mean() + l2 * penalty

    return RealNVP()


class TorchFlowRunner:
    def __init__(self, images, batch, cfg, channels_last):
        import torch

        torch.manual_seed(0)
        m = cfg.model
        self.model = torch_realnvp(images.shape[1:], m.num_scales, m.num_blocks, m.num_filters,
                                   m.momentum, m.epsilon, m.alpha, cfg.train.l2)
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
            loss = self.model.loss(x)
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
        return config.resolve_flow(yaml.safe_load(f))


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
    parser.add_argument("--serve", choices=("tfimb", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args)

    worker_argv = ["--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
                   "--torch-flow-layout", args.torch_flow_layout]
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
