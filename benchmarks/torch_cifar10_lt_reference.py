"""The control for the CIFAR-10-LT table: Cao et al.'s own recipe, in PyTorch, on an image folder.

    python benchmarks/torch_cifar10_lt_reference.py --data DIR --run-dir DIR [--resume]
        [--ratio 100] [--epochs 200] [--seed 0] [--threads 2] [--workers 2]

tfimb's cross-entropy row of CIFAR-10-LT (configs/cifar10_lt/ce_r100.yaml) is trained on this
machine's CIFAR-10, a JPEG copy (quality about 75), not the lossless release the papers used.
When tfimb's figure falls short of the published one, this script tells the data from tfimb:
it trains the published recipe as the authors' PyTorch code (kaidic/LDAM-DRW, `cifar_train.py`
with `--loss_type CE --train_rule None`) specifies it, written here from that description:

* data: class c keeps `int(5000 * (1/ratio)^(c/9))` training images, chosen as the reference
  does (NumPy's legacy generator seeded with `--seed`, each class's indices shuffled in class
  order, the first n kept); the full test split; pad-4 random crop (zero padding of the raw
  pixels), horizontal flip, normalisation by the fixed constants mean (0.4914, 0.4822,
  0.4465), std (0.2023, 0.1994, 0.2010);
* model: ResNet-32 with "option A" shortcuts (stride-2 subsampling, zero channels padded on) and
  Kaiming-normal (fan-in) initialisation of every convolution and of the linear layer;
* SGD momentum 0.9, coupled weight decay 2e-4 on every parameter, batch 128 (the last, short
  batch kept), lr 0.1 * e / 5 in epochs e = 1..5, 0.1 to epoch 160, 0.001 to 180, 1e-5 after;
  softmax cross-entropy.

Test accuracy is evaluated on tfimb's schedule (every 5 epochs, every epoch from 161) to keep
the run short; the reference evaluates every epoch and reports the best, which after epoch 160
is the same set of epochs that matter. Checkpoints after every epoch (written atomically), so
`--resume` continues an interrupted run; `history.csv` grows by an epoch at a time and
`results.json` (final and best test accuracy, per-class accuracy, seconds, machine) is written
once, atomically, when the run finishes.
"""

import argparse
import csv
import json
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_cifar10_lt  # noqa: E402  (read_split, Images: the image folder, pad-crop-flip)
from tfimb import platform_info  # noqa: E402  (no TensorFlow)

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "seconds"]


def reference_subset(labels, ratio, seed):
    """Indices of the long-tailed subset, drawn as the reference's `IMBALANCECIFAR10` draws it."""
    rng = np.random.RandomState(seed)
    classes = int(labels.max()) + 1
    n_max = len(labels) // classes
    keep = []
    for c in range(classes):
        n = int(n_max * (1.0 / ratio) ** (c / (classes - 1.0)))
        index = np.flatnonzero(labels == c)
        rng.shuffle(index)
        keep.append(index[:n])
    return np.concatenate(keep)


class Block(nn.Module):
    """Basic block; where the shape changes, the shortcut subsamples by 2 and pads channels."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2],
                                                    (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(y + shortcut)


class ResNet32(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for block in range(5):
                blocks.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.linear(x.mean(dim=(2, 3)))


def learning_rate(epoch):
    """The reference's schedule for a 1-based epoch."""
    if epoch <= 5:
        return 0.1 * epoch / 5
    return 0.1 if epoch <= 160 else 0.001 if epoch <= 180 else 1e-5


def evaluated(epoch, epochs):
    return epoch % 5 == 0 or epoch > 160 or epoch == epochs


def write_atomically(path, write):
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def test_accuracy(model, loader, num_classes):
    model.eval()
    hits, totals = np.zeros(num_classes), np.zeros(num_classes)
    with torch.no_grad():
        for x, y in loader:
            predicted = model(x).argmax(1)
            np.add.at(totals, y.numpy(), 1)
            np.add.at(hits, y.numpy(), (predicted == y).numpy())
    return hits.sum() / totals.sum(), hits / totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="image folder root/{train,test}/<class>/")
    parser.add_argument("--run-dir", required=True, type=pathlib.Path)
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    parser.add_argument("--ratio", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    run = args.run_dir
    settings = {"data": os.path.abspath(args.data), "ratio": args.ratio, "epochs": args.epochs,
                "seed": args.seed}
    checkpoint_path, history_path = run / "checkpoint.pt", run / "history.csv"
    if (run / "results.json").exists():
        print(f"{run}: finished (results.json)")
        return 0
    if run.exists() and any(run.iterdir()) and not args.resume:
        sys.exit(f"Invalid value for argument `--run-dir`: {run} holds a run; pass --resume to "
                 "continue it or choose an empty folder.")
    run.mkdir(parents=True, exist_ok=True)
    if (run / "settings.json").exists():
        saved = json.loads((run / "settings.json").read_text())
        if saved != settings:
            sys.exit(f"Invalid value for --resume: {run} was started with {saved}, "
                     f"not {settings}.")
    else:
        (run / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train_x, train_y = torch_cifar10_lt.read_split(args.data, "train")
    keep = reference_subset(train_y, args.ratio, args.seed)
    train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = torch_cifar10_lt.read_split(args.data, "test")
    num_classes = int(train_y.max()) + 1
    loader_args = dict(batch_size=128, num_workers=args.workers,
                       persistent_workers=args.workers > 0)
    train_loader = torch.utils.data.DataLoader(
        torch_cifar10_lt.Images(train_x, train_y, MEAN, STD, True), shuffle=True,
                                               **loader_args)
    test_loader = torch.utils.data.DataLoader(
        torch_cifar10_lt.Images(test_x, test_y, MEAN, STD, False), shuffle=False,
                                              **loader_args)
    model = ResNet32(num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    done, best, seconds = 0, (-1.0, 0), 0.0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        done, best, seconds = state["epoch"], tuple(state["best"]), state["seconds"]
    # History rows past the checkpoint (an epoch cut short after its row) are dropped.
    rows = []
    if history_path.exists():
        with open(history_path) as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= done]
    print(json.dumps({"train_images": len(train_y), "counts": np.bincount(train_y).tolist(),
                      "resumed_after_epoch": done, "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "machine": platform_info.describe()}), flush=True)

    for epoch in range(done + 1, args.epochs + 1):
        began = time.perf_counter()
        lr = learning_rate(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        total, correct, count = 0.0, 0, 0
        for x, y in train_loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
        accuracy = ""
        if evaluated(epoch, args.epochs):
            accuracy, _ = test_accuracy(model, test_loader, num_classes)
            best = max(best, (accuracy, epoch))
        seconds += time.perf_counter() - began
        rows.append({"epoch": epoch, "lr": lr, "train_loss": total / count,
                     "train_accuracy": correct / count, "test_accuracy": accuracy,
                     "seconds": round(time.perf_counter() - began, 1)})

        def write_history(path):
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, HISTORY_FIELDS)
                writer.writeheader()
                writer.writerows(rows)

        # History first: a row past the checkpoint is dropped on --resume (above).
        write_atomically(history_path, write_history)
        write_atomically(checkpoint_path, lambda p: torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
             "epoch": epoch, "best": list(best), "seconds": seconds}, p))
        print(json.dumps(rows[-1]), flush=True)

    final, per_class = test_accuracy(model, test_loader, num_classes)
    results = {"final_test_accuracy": final, "best_test_accuracy": best[0],
               "best_epoch": best[1], "per_class_test_accuracy": per_class.tolist(),
               "train_counts": np.bincount(train_y).tolist(), "training_seconds": seconds,
               "cpu": platform_info.cpu_model(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "settings": settings}
    write_atomically(run / "results.json",
                     lambda p: p.write_text(json.dumps(results, indent=1) + "\n"))
    print(json.dumps({k: results[k] for k in ("final_test_accuracy", "best_test_accuracy",
                                              "best_epoch", "training_seconds")}), flush=True)
    print(f"wall {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
