"""Training images/second: tfimb's training path beside PyTorch, same models, same machine.

    pip install -e ".[benchmarks]"          # torch==2.13.0 (CPU build)
    python benchmarks/compare_frameworks.py                       # both models, float32 and bf16
    python benchmarks/compare_frameworks.py --models resnet20 --rounds 2 --steps 10

tfimb: `tfimb.train.build_trainer` (the model with its normalisation layer, coupled L2 weight
decay 5e-4 on every weight, softmax cross-entropy, the group metrics, SGD with momentum 0.9),
trained by `tfimb.loop.TrainingLoop` (the loop of `tfimb train` under every strategy) from
`tfimb.data.pipeline` over uint8 images in memory, without augmentation (as the PyTorch side).
PyTorch: the same architecture in `torch.nn` (3x3 stem, basic blocks with 1x1 projection
shortcuts, global average pooling, dense head; batch-norm eps 1e-5 and momentum 0.1, i.e.
Keras' 0.9), channels-last, the same normalisation as the first op, cross-entropy,
`torch.optim.SGD(momentum=0.9, weight_decay=5e-4)` (coupled L2, the same math), bf16 through
`torch.autocast("cpu")`; batches from tensors in memory.

Protocol: for each model, every (framework, precision) is built and warmed up first (tracing,
oneDNN primitive creation), then `--rounds` rounds run tfimb and PyTorch alternately (A/B/A/B)
for `--steps` timed steps each; the table gives the median img/s of the rounds and the ratio
tfimb / PyTorch. Random images and labels (the step time does not depend on the pixels).
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

PRECISIONS = {"float32": "float32", "bf16": "mixed_bfloat16"}
ARCHITECTURES = {"resnet20": ((16, 32, 64), 3), "resnet18_cifar": ((64, 128, 256, 512), 2)}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# tfimb


class TfimbRunner:
    def __init__(self, name, precision, images, labels, batch, run_dir):
        import keras
        import tensorflow as tf

        from tfimb import config, data, loop, train

        keras.mixed_precision.set_global_policy(PRECISIONS[precision])
        keras.utils.set_random_seed(0)
        cfg = config.resolve({"model": {"name": name}, "loss": {"name": "softmax_cross_entropy"},
                              "mixed_precision": PRECISIONS[precision]})
        split = data.Split(images, labels)
        dataset = data.Dataset(split, data.Split(images[:0], labels[:0]), split,
                               [str(i) for i in range(10)], 10)
        strategy = tf.distribute.get_strategy()
        _, self.trainer, _ = train.build_trainer(cfg, dataset, [1, 4, 6])
        keras.mixed_precision.set_global_policy("float32")
        self.loop = loop.TrainingLoop(self.trainer, strategy, run_dir)
        ds = data.pipeline(split, batch, training=True, augment=False).repeat()
        self.iterator = iter(strategy.experimental_distribute_dataset(ds))

    def run(self, steps):
        start = time.perf_counter()
        self.loop.run_steps(self.iterator, steps)
        int(self.trainer.optimizer.iterations.numpy())  # Waits for the last step.
        return time.perf_counter() - start


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


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES),
                        choices=list(ARCHITECTURES))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                        choices=list(PRECISIONS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per runner first")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per configuration")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf
    import torch

    import tfimb

    batch = args.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch * 8, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=len(images)).astype(np.int32)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"tfimb {tfimb.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"batch {batch}, {args.rounds} rounds of {args.steps} timed steps per framework "
          f"after {args.warmup} warm-up steps, interleaved\n")
    print(f"{'model':<16} {'precision':<10} {'tfimb img/s':>12} {'PyTorch img/s':>14} "
          f"{'tfimb/PyTorch':>14}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            runners = {}
            for precision in args.precisions:
                tfimb_runner = TfimbRunner(name, precision, images, labels, batch,
                                           os.path.join(scratch, f"{name}_{precision}"))
                torch_runner = TorchRunner(name, precision, images, labels, batch)
                tfimb_runner.run(args.warmup)
                torch_runner.run(args.warmup)
                runners[precision] = (tfimb_runner, torch_runner)
            for precision, (ours, theirs) in runners.items():
                times = {"tfimb": [], "torch": []}
                for _ in range(args.rounds):
                    times["tfimb"].append(ours.run(args.steps))
                    times["torch"].append(theirs.run(args.steps))
                rate = {k: args.steps * batch / statistics.median(v) for k, v in times.items()}
                print(f"{name:<16} {precision:<10} {rate['tfimb']:12.1f} {rate['torch']:14.1f} "
                      f"{rate['tfimb'] / rate['torch']:14.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
