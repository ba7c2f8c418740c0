"""The CIFAR-10-LT protocol as a PyTorch user writes it, for `compare_end_to_end.py`.

    python benchmarks/torch_cifar10_lt.py --data DIR --epochs 3 [--ratio 100] [--workers 2]

What the field's scripts do (Cao et al.'s `cifar_train.py` is the model): a `Dataset` of decoded
images in memory with per-image transforms in `DataLoader` worker processes (pad-4 random crop,
horizontal flip, normalise), ResNet-32 (the CIFAR n=5 ResNet, here with the same projection
shortcuts as tfimb's, channels-last), SGD momentum 0.9 with coupled weight decay 2e-4, lr 0.1
with a 5-epoch linear warm-up, cross-entropy, and evaluation on the full test split after every
epoch. torchvision is not used (its PyPI wheel does not load beside this torch build): the image
folder is read with Pillow, the transforms are a few lines of NumPy.

Prints one JSON line per epoch: {"epoch", "seconds" (wall time of the epoch: loading batches,
training, evaluation), "train_seconds", "eval_seconds", "loss", "test_accuracy"} after a
{"startup_seconds"} line (imports, decoding the folder, building the model).
"""

import argparse
import json
import os
import pathlib
import sys
import time

START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_frameworks  # noqa: E402  (the PyTorch ResNets, same architecture as tfimb's)


def read_split(root, split):
    """(uint8 images NHWC, int64 labels) of root/split/<class>/*.jpg, classes in sorted order."""
    classes = sorted(p.name for p in (pathlib.Path(root) / split).iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((pathlib.Path(root) / split / name).iterdir()):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(index)
    return np.stack(images), np.array(labels, np.int64)


def long_tail(labels, ratio, seed):
    """Indices keeping int(n_max * ratio^(-c/(C-1))) images of class c (Cao et al.'s rule)."""
    rng = np.random.default_rng(seed)
    classes = int(labels.max()) + 1
    n_max = min(np.bincount(labels))
    keep = []
    for c in range(classes):
        n = int(n_max * ratio ** (-c / (classes - 1)) + 1e-9)
        keep.append(rng.permutation(np.flatnonzero(labels == c))[:n])
    return np.sort(np.concatenate(keep))


class Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, mean, std, train):
        self.images, self.labels, self.train = images, labels, train
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self.train:  # RandomCrop(32, padding=4) + RandomHorizontalFlip.
            padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
            top, left = np.random.randint(0, 9, size=2)
            image = padded[top:top + 32, left:left + 32]
            if np.random.rand() < 0.5:
                image = image[:, ::-1]
        x = (image.astype(np.float32) / 255.0 - self.mean) / self.std  # ToTensor + Normalize.
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), self.labels[index]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="image folder root/{train,test}/<class>/")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=100.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    train_x, train_y = read_split(args.data, "train")
    keep = long_tail(train_y, args.ratio, args.seed)
    train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = read_split(args.data, "test")
    mean = (train_x / 255.0).mean(axis=(0, 1, 2)).astype(np.float32)
    std = (train_x / 255.0).std(axis=(0, 1, 2)).astype(np.float32)
    loader_args = dict(batch_size=args.batch_size, num_workers=args.workers,
                       persistent_workers=args.workers > 0)
    train_loader = torch.utils.data.DataLoader(
        Images(train_x, train_y, mean, std, True), shuffle=True, **loader_args)
    test_loader = torch.utils.data.DataLoader(
        Images(test_x, test_y, mean, std, False), shuffle=False, **loader_args)
    # Normalisation happens in the transforms, so the model's own layer is the identity.
    model = compare_frameworks.torch_model("resnet32", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    criterion = torch.nn.CrossEntropyLoss()
    print(json.dumps({"startup_seconds": time.perf_counter() - START,
                      "train_images": len(train_y), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)

    for epoch in range(args.epochs):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * min(1.0, (epoch + 1) / 5)
        model.train()
        total, count = 0.0, 0
        for x, y in train_loader:
            x = x.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss) * len(y)
            count += len(y)
        trained = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += int((model(x.contiguous(memory_format=torch.channels_last))
                                .argmax(1) == y).sum())
        end = time.perf_counter()
        print(json.dumps({"epoch": epoch + 1, "seconds": end - start,
                          "train_seconds": trained - start, "eval_seconds": end - trained,
                          "loss": total / count, "test_accuracy": correct / len(test_y)}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
