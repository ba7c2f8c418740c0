"""Training-step time of a small ResNet with each tfimb loss, relative to Keras' sparse CE.

Target: every tfimb loss within 3% of `keras.losses.SparseCategoricalCrossentropy` per step,
in float32 and under mixed_bfloat16.

    python benchmarks/loss_overhead.py                       # resnet20, batch 128, both precisions
    python benchmarks/loss_overhead.py --model resnet18_cifar --rounds 3

Two measurements, both interleaved (rounds visit the losses in a fresh random order, the figure
per loss is the median over rounds, so drifts of the shared machine hit every loss alike):

1. Whole training step: one ResNet and one SGD optimizer (momentum 0.9, learning rate 0 so the
   shared weights stay put) shared by all losses;
   per loss a `tf.function` step like Keras' `train_step` (forward, loss, gradients, update) on
   the same in-memory batch. On a shared 2-core machine these medians still move by a few
   percent between runs, more than the losses differ.
2. The loss alone: value and gradient with respect to the `(batch, 10)` logits, per call. Its
   difference to Keras' loss, divided by the Keras step time, is the overhead a loss adds to a
   step, measured to a fraction of a percent. The target is checked on this column.

LDAM is timed on the same dense head as the others (only the loss differs).
"""

import argparse
import functools
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tfimb  # noqa: E402  (first: oneDNN on before TensorFlow loads)
import numpy as np  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfimb import losses, models  # noqa: E402

BASELINE = "keras_sparse_categorical_crossentropy"


def make_losses(counts, names):
    """The losses to time, by name; the Keras baseline first."""
    table = {BASELINE: keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    arguments = {
        "softmax_cross_entropy": {},
        "inverse_class_frequency": {"counts": counts},
        "focal": {"gamma": 1.0},
        "class_balanced_softmax": {"beta": 0.999, "counts": counts},
        "class_balanced_focal": {"beta": 0.999, "counts": counts, "gamma": 1.0},
        "balanced_softmax": {"counts": counts},
        "logit_adjusted": {"counts": counts, "tau": 1.0},
        "ldam": {"counts": counts},
    }
    for name in names:
        table[name] = losses.get(name, **arguments[name])
    return table


def _interleaved_medians(functions, rounds, repeats, rng):
    """Median seconds per call of each function, timed in `rounds` shuffled blocks."""
    times = {name: [] for name in functions}
    order = list(functions)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn = functions[name]
            start = time.perf_counter()
            for _ in range(repeats):
                result = fn()
            np.asarray(result)  # Wait for the last call to finish.
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def _train_step(model, optimizer, loss):
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            value = loss(y, logits)
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return value

    return step


def _loss_and_gradient(loss, labels, logits):
    @tf.function
    def call():
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(labels, logits)
        return tape.gradient(value, logits)

    return call


def time_losses(args, precision):
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # CIFAR-10 with classes 1, 4, 6 cut to 250 images: the imbalance protocol's counts.
    counts = [5000] * 10
    for c in (1, 4, 6):
        counts[c] = 250
    x = tf.constant(rng.uniform(-1, 1, size=(args.batch_size, 32, 32, 3)), tf.float32)
    y = tf.constant(rng.choice(10, size=args.batch_size, p=np.array(counts) / sum(counts)))
    table = make_losses(counts, args.losses)

    model = models.get(args.model, num_classes=10)
    # Learning rate 0: the update runs in full but leaves the shared weights as they are, so no
    # loss (LDAM's scale 30 on a dense head, say) can make the others time diverged weights.
    optimizer = keras.optimizers.SGD(0.0, momentum=0.9)
    optimizer.build(model.trainable_variables)
    steps = {}
    for name, loss in table.items():
        step = _train_step(model, optimizer, loss)
        for _ in range(args.warmup):
            step(x, y)
        steps[name] = functools.partial(step, x, y)
    step_times = _interleaved_medians(steps, args.rounds, args.steps, rng)

    logits = tf.constant(rng.normal(size=(args.batch_size, 10)), tf.float32)
    alone = {name: _loss_and_gradient(loss, y, logits) for name, loss in table.items()}
    for fn in alone.values():
        fn()
    loss_times = _interleaved_medians(alone, args.rounds, args.loss_calls, rng)
    return step_times, loss_times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(models.MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed block")
    parser.add_argument("--rounds", type=int, default=15, help="timed blocks per loss")
    parser.add_argument("--loss-calls", type=int, default=200,
                        help="loss+gradient calls per timed block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--losses", nargs="+", default=list(losses.LOSSES),
                        choices=list(losses.LOSSES))
    args = parser.parse_args(argv)

    print(tfimb.platform_info.describe())
    print(f"tfimb {tfimb.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"model {args.model}, batch {args.batch_size}, medians of {args.rounds} blocks of "
          f"{args.steps} steps / {args.loss_calls} loss calls")
    worst = 0.0
    for precision in args.precisions:
        step_times, loss_times = time_losses(args, precision)
        base_step, base_loss = step_times[BASELINE], loss_times[BASELINE]
        print(f"\n{precision}")
        print(f"  {'loss':<40} {'step ms':>8} {'vs Keras':>9} {'loss+grad us':>13} "
              f"{'added to step':>14}")
        for name in step_times:
            added = (loss_times[name] - base_loss) / base_step
            if name != BASELINE:
                worst = max(worst, added)
            print(f"  {name:<40} {1e3 * step_times[name]:8.1f} "
                  f"{step_times[name] / base_step - 1:+9.1%} {1e6 * loss_times[name]:13.0f} "
                  f"{added:+14.2%}")
    keras.mixed_precision.set_global_policy("float32")
    print(f"\nlargest step time added by a tfimb loss: {worst:+.2%} (target: within +3%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
