"""Training images/second of `tfimb train`'s step beside a bare Keras `fit` of the same model.

    python benchmarks/train_throughput.py                 # resnet20 and resnet18_cifar, both precisions
    python benchmarks/train_throughput.py --models resnet20 --steps 20

tfimb: the training pipeline of `tfimb train` (uint8 images in memory, seeded shuffle, pad-4
random crop and flip as a parallel map, prefetch), the model with its normalisation layer and
coupled weight decay, `ClassBalancedFocal` and the three group metrics, trained by
`tfimb.runtime.loop.TrainingLoop` (the loop `tfimb train` uses under every strategy).
Keras: the same model (normalisation included, no weight decay) compiled with
`SparseCategoricalCrossentropy` and plain accuracy, `fit` on in-memory float32 arrays (no
augmentation). Both: SGD with momentum, batch 128, the same number of timed steps after a
warm-up epoch that absorbs tracing. Images come from the CIFAR-10 image folder $TFIMB_DATA_DIR when set
(the first 50 batches' worth of training images), else random pixels.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402

import keras  # noqa: E402

from tfimb import config, data, metrics  # noqa: E402
from tfimb.experiments import classify  # noqa: E402
from tfimb.runtime import loop  # noqa: E402


def _images(count):
    root = data.folder_from_environment()
    if root:
        cfg = config.resolve({"data": {"source": "folder", "dir": root},
                              "imbalance": {"minority": [1, 4, 6], "minority_count": 250}})
        dataset = data.load(cfg.data, cfg.imbalance)
        index = np.random.default_rng(0).permutation(len(dataset.train))[:count]
        return dataset, dataset.train.images[index], dataset.train.labels[index], root
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count)
    split = data.Split(images, labels)
    return data.Dataset(split, data.Split(images[:0], labels[:0]), split,
                        [str(i) for i in range(10)], 10), images, labels, "random pixels"


def _timed_loop(model, dataset, steps, warmup):
    import tempfile

    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    with tempfile.TemporaryDirectory() as run_dir:
        training = loop.TrainingLoop(model, strategy, run_dir)
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        training.run_steps(iterator, warmup)
        float(model.optimizer.iterations.numpy())
        start = time.perf_counter()
        training.run_steps(iterator, steps)
        float(model.optimizer.iterations.numpy())  # Waits for the last step.
        return time.perf_counter() - start


def measure(name, precision, args, dataset, images, labels):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    cfg = config.resolve({"model": {"name": name}, "mixed_precision": precision})
    batch = args.batch_size
    counts = np.bincount(dataset.train.labels, minlength=10)

    # tfimb: the pipeline, model wrapper, loss and metrics of `tfimb train`.
    model = classify.build_model(cfg, dataset)
    trainer = classify.regularized(model, cfg.train.weight_decay)
    trainer(np.zeros((1, 32, 32, 3), np.float32))
    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                    loss=tfimb.ClassBalancedFocal(0.99, counts, gamma=1.0),
                    metrics=metrics.group_accuracies([1, 4, 6], 10))
    split = data.Split(images, labels)
    ds = data.pipeline(split, batch, training=True, seed=0).repeat()
    tfimb_seconds = _timed_loop(trainer, ds, args.steps, args.warmup)

    # Bare Keras: the same model on in-memory arrays.
    keras.utils.set_random_seed(0)
    bare = classify.build_model(cfg, dataset)
    bare.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    x = images.astype(np.float32)
    bare.fit(x, labels, batch_size=batch, epochs=1, steps_per_epoch=args.warmup, verbose=0)
    start = time.perf_counter()
    bare.fit(x, labels, batch_size=batch, epochs=1, steps_per_epoch=args.steps, verbose=0)
    keras_seconds = time.perf_counter() - start
    keras.mixed_precision.set_global_policy("float32")
    images_timed = args.steps * batch
    return images_timed / tfimb_seconds, images_timed / keras_seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet18_cifar"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = parser.parse_args(argv)

    count = args.batch_size * (args.steps + args.warmup)
    dataset, images, labels, source = _images(count)
    print(tfimb.platform_info.describe())
    print(f"tfimb {tfimb.__version__}, keras {keras.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; images: {source}")
    print(f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"\n{'model':<16} {'precision':<16} {'tfimb img/s':>12} {'Keras img/s':>12} "
          f"{'tfimb/Keras':>12}")
    for name in args.models:
        for precision in args.precisions:
            ours, bare = measure(name, precision, args, dataset, images, labels)
            print(f"{name:<16} {precision:<16} {ours:12.1f} {bare:12.1f} {ours / bare:12.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
