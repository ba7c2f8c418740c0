"""The training loop shared by every strategy: checkpoints, fallback, history, multi-worker."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

import keras
import tensorflow as tf

from cli_helpers import run_tfimb
from tfimb import config
from tfimb.experiments import classify
from tfimb.runtime import launch, loop


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, "relu")(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(epoch, n=40, batch=8):
    rng = np.random.default_rng(epoch)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype(np.int32))).batch(batch)


def _fit(run_dir, epochs, callbacks=(), **kwargs):
    model = _model()
    training = loop.TrainingLoop(model, tf.distribute.get_strategy(), run_dir, **kwargs)
    rows = training.fit(_data, 5, epochs, 8, callbacks=callbacks, verbose=0)
    return model, rows


class _StopAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch
        if epoch == self.epoch and self.batch is None:
            raise KeyboardInterrupt("simulated crash")

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            raise KeyboardInterrupt("simulated crash")


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def test_resumed_training_equals_uninterrupted(tmp_path):
    reference, rows = _fit(tmp_path / "whole", 3)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", 3, [_StopAt(2)])
    resumed, rows = _fit(tmp_path / "cut", 3)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    for a, b in zip(_weights(reference), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_run_resumed_where_the_learning_rate_changes_equals_the_uninterrupted_one(tmp_path):
    """The momentum correction at a change of rate reads the rate the checkpoint restored."""
    rates = [0.1, 0.02, 0.004]  # The model compiles with 0.1: a fresh rate would be wrong.

    def schedule():
        return classify.EpochLearningRate(lambda epoch: rates[epoch])

    reference, _ = _fit(tmp_path / "whole", 3, [schedule()])
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", 3, [schedule(), _StopAt(2)])
    seen = []  # The rate the resumed run starts epoch 2 from (before the schedule sets it).
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(
        float(keras.ops.convert_to_numpy(record.model.optimizer.learning_rate))))
    resumed, rows = _fit(tmp_path / "cut", 3, [record, schedule()])
    assert seen == pytest.approx([rates[1]])
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx(rates)
    for a, b in zip(_weights(reference), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_mid_epoch_checkpoints_resume_where_they_stopped(tmp_path):
    reference, _ = _fit(tmp_path / "whole", 2)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", 2, [_StopAt(1, batch=3)], checkpoint_every=2)
    # Epoch 0's checkpoint and epoch 1 after its second step are on disk.
    model = _model()
    training = loop.TrainingLoop(model, tf.distribute.get_strategy(), tmp_path / "cut")
    assert training.restore() == (1, 2)
    resumed, rows = _fit(tmp_path / "cut", 2, checkpoint_every=2)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for a, b in zip(_weights(reference), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_corrupt_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capfd):
    reference, _ = _fit(tmp_path / "whole", 3)
    run_dir = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _fit(run_dir, 3, [_StopAt(2)])
    newest = loop.checkpoint_paths(run_dir / loop.CHECKPOINTS)[0]
    assert newest.endswith("ckpt-2")
    data = next((run_dir / loop.CHECKPOINTS).glob("ckpt-2.data-*"))
    data.write_bytes(b"\0garbage" * 8)  # A partial, overwritten write.
    history = (run_dir / loop.HISTORY).read_text().splitlines()
    assert len(history) == 3  # header + epochs 0 and 1

    resumed, rows = _fit(run_dir, 3)
    err = capfd.readouterr().err
    assert f"checkpoint {newest} is unreadable" in err and "ckpt-1" in err
    # Epoch 1 trained again from ckpt-1; the history holds each epoch once.
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert len((run_dir / loop.HISTORY).read_text().splitlines()) == 4
    for a, b in zip(_weights(reference), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    _fit(tmp_path, 5, keep=3)
    paths = loop.checkpoint_paths(tmp_path / loop.CHECKPOINTS)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["ckpt-5", "ckpt-4", "ckpt-3"]
    assert len(list((tmp_path / loop.CHECKPOINTS).glob("ckpt-*"))) == 6  # .index + .data


def test_a_non_finite_loss_stops_before_any_checkpoint_of_it(tmp_path):
    model = _model()
    model.optimizer.learning_rate.assign(1e30)  # Diverges within the first steps.
    training = loop.TrainingLoop(model, tf.distribute.get_strategy(), tmp_path,
                                 checkpoint_every=2)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        training.fit(_data, 5, 2, 8, verbose=0)
    for path in loop.checkpoint_paths(tmp_path / loop.CHECKPOINTS):  # None, or finite ones.
        training.checkpoint.read(path)
        assert all(np.isfinite(w).all() for w in model.get_weights()), path
    assert not (tmp_path / "results.json").exists()


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    _fit(tmp_path, 1)
    for path in (tmp_path / loop.CHECKPOINTS).glob("ckpt-*.data-*"):
        path.write_bytes(b"")
    with pytest.raises(loop.CheckpointError, match="could be restored"):
        _fit(tmp_path, 2)


def test_multi_worker_needs_tf_config(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cfg = config.resolve({}, ["distribute.strategy=multi_worker", "data.source=digits"])
    with pytest.raises(classify.RunDirError, match="TF_CONFIG.*--local-workers"):
        classify.run(cfg, tmp_path)
    with pytest.raises(launch.LaunchError, match="--local-workers=0"):
        launch.check_count(0)


def test_local_worker_environments():
    envs = [json.loads(e) for e in launch.multi_worker_environments(3)]
    assert [e["task"] for e in envs] == [{"type": "worker", "index": i} for i in range(3)]
    workers = envs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(e["cluster"]["worker"] == workers for e in envs)


TINY_YAML = """\
data: {source: digits, augment: true}
imbalance: {minority: [1, 4, 6], minority_count: 7, majority_count: 25}
model: {name: resnet8}
loss: {name: softmax_cross_entropy}
train: {epochs: 2, batch_size: 28, lr_values: [0.01, 0.001], lr_boundaries: [1]}
mixed_precision: float32
distribute: {sync_batch_norm: true}
"""


def _load_weights(run_dir):
    return keras.saving.load_model(run_dir / "model.keras").get_weights()


def _start(cwd, command):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run_dir, launcher, after=None):
    """Until the chief has written a checkpoint other than `after`; returns the newest."""
    deadline = time.monotonic() + 300
    while True:
        paths = loop.checkpoint_paths(run_dir / "checkpoints")
        if paths and paths[-1] != after:
            return paths[-1]
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_two_workers_preempted_then_killed_resume_to_the_weights_of_one_worker(tmp_path):
    """2 local workers. SIGTERM to worker 1 in epoch 2: TensorFlow's PreemptionCheckpointHandler
    agrees on a step, both save there, the launcher ends with 143 and one line. The same
    command resumes; worker 1 SIGKILLed after the next checkpoint ends it in one line too; the
    same command again completes the run, with the weights and history one process trains
    with the same global batch."""
    text = TINY_YAML.replace("epochs: 2", "epochs: 3")
    (tmp_path / "tiny.yaml").write_text(text)  # 196 images: 7 global batches of 28.
    one = classify.run(config.resolve(yaml.safe_load(text)), tmp_path / "one", verbose=0)

    run_dir = tmp_path / "two"
    command = [sys.executable, "-m", "tfimb", "train", "tiny.yaml", "--workdir", "two",
               "--local-workers", "2"]
    worker1 = run_dir / "workers" / "worker1.pid"
    launcher = _start(tmp_path, command)
    _wait_for_checkpoint(run_dir, launcher)  # Epoch 1 is done.
    time.sleep(0.5)  # Into epoch 2's steps.
    os.kill(int(worker1.read_text()), signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "deprecated" not in err
    assert "stopped on SIGTERM (status 143); in training the workers saved a checkpoint" in err
    assert "tfimb: stopped by SIGTERM" in (run_dir / "workers" / "worker1.log").read_text()

    launcher = _start(tmp_path, command)  # The same command, as the line says.
    # (Saved at the step the workers agreed on: a new checkpoint unless that was epoch 1's end.)
    preempted = loop.checkpoint_paths(run_dir / "checkpoints")[-1]
    _wait_for_checkpoint(run_dir, launcher, after=preempted)
    os.kill(int(worker1.read_text()), signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "worker1 exited" in err and "same command resumes" in err
    assert not (run_dir / "results.json").exists()

    again = run_tfimb(*command[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    results = [one, json.loads((run_dir / "results.json").read_text())]
    assert [r["replicas"] for r in results] == [1, 2]
    assert [r["epochs_completed"] for r in results] == [3, 3]
    histories = [loop.History(tmp_path / w / "history.csv", writable=False).rows
                 for w in ("one", "two")]
    # Every logged metric matches; epoch_seconds is each run's own wall time.
    for row_one, row_two in zip(*histories):
        assert set(row_one) == set(row_two) and "epoch_seconds" in row_one
        for key in sorted(set(row_one) - {"epoch_seconds"}):
            np.testing.assert_allclose(float(row_one[key]), float(row_two[key]), rtol=1e-4,
                                       err_msg=key)
    assert len(histories[0]) == len(histories[1]) == 3
    for a, b in zip(_load_weights(tmp_path / "one"), _load_weights(run_dir)):
        assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(a) + 1e-6
    # Only the chief wrote: one set of checkpoints, no worker scratch folders left.
    assert not list((run_dir / "checkpoints").glob(".worker-*"))


def test_evaluation_batches_never_leave_a_replica_empty():
    assert loop.evaluation_batch_size(9, 8, 1) == 8       # One replica: as configured.
    assert loop.evaluation_batch_size(9, 8, 2) == 7       # 9 = 7 + 2: both replicas busy.
    assert loop.evaluation_batch_size(16, 8, 2) == 8      # Whole batches.
    assert loop.evaluation_batch_size(10000, 128, 2) == 128  # 10000 % 128 = 16 >= 2.
    for n in range(3, 60):
        for replicas in (2, 3):
            size = loop.evaluation_batch_size(n, 8, replicas)
            assert n % size == 0 or n % size >= replicas, (n, replicas, size)
