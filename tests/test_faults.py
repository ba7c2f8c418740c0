"""Faults a cluster deals out (issue 36): preemption by SIGTERM or Ctrl-C, full disks and
unwritable places, two runs on one directory. Each ends in one line and nothing is lost."""

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import keras
import tensorflow as tf

from cli_helpers import run_tfimb
from tfimb import cli
from tfimb.runtime import loop, preemption, rundir

TINY_YAML = """\
data: {source: digits}
imbalance: {minority: [1, 4, 6], minority_count: 7, majority_count: 25}
model: {name: resnet8}
loss: {name: softmax_cross_entropy}
train: {epochs: 3, batch_size: 28, lr_values: [0.01, 0.001], lr_boundaries: [2]}
mixed_precision: float32
"""


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, "relu")(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _data(epoch, n=40, batch=8):
    rng = np.random.default_rng(epoch)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, (x[:, 0] > 0).astype(np.int32))).batch(batch)


def _fit(run_dir, epochs=3, callbacks=(), **kwargs):
    model = _model()
    training = loop.TrainingLoop(model, tf.distribute.get_strategy(), run_dir, **kwargs)
    rows = training.fit(_data, 5, epochs, 8, callbacks=callbacks, verbose=0)
    return model, rows


class _Signal(keras.callbacks.Callback):
    """Sends `signals` to this process after batch `batch` of epoch `epoch`."""

    def __init__(self, epoch, batch, signals=(signal.SIGTERM,)):
        super().__init__()
        self.epoch, self.batch, self.signals, self.current = epoch, batch, signals, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


def _without_seconds(rows):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_resume_equals_uninterrupted(tmp_path, signum):
    reference, rows = _fit(tmp_path / "whole")
    with pytest.raises(preemption.Preempted) as stopped:
        _fit(tmp_path / "cut", callbacks=[_Signal(1, 2, (signum,))])
    assert preemption.exit_status(stopped.value) == 128 + signum
    assert "at step 3 of 5 in epoch 2" in str(stopped.value)
    assert signal.getsignal(signum) is not loop.preemption.StopRequests._record  # Restored.
    model = _model()
    assert loop.TrainingLoop(model, tf.distribute.get_strategy(),
                             tmp_path / "cut").restore() == (1, 3)
    resumed, resumed_rows = _fit(tmp_path / "cut")
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The interrupted epoch's training metrics cover all its steps, as uninterrupted.
    assert _without_seconds(resumed_rows) == _without_seconds(rows)


def test_a_signal_at_an_epoch_end_stops_after_its_checkpoint(tmp_path):
    _, rows = _fit(tmp_path / "whole")
    with pytest.raises(preemption.Preempted, match="after epoch 1"):
        _fit(tmp_path / "cut", callbacks=[_Signal(0, 4)])  # The epoch's last step.
    _, resumed_rows = _fit(tmp_path / "cut")
    assert _without_seconds(resumed_rows) == _without_seconds(rows)


def test_a_second_signal_stops_at_once(tmp_path):
    with pytest.raises(preemption.Terminated):
        _fit(tmp_path / "cut", callbacks=[_Signal(1, 1, (signal.SIGTERM, signal.SIGTERM))])
    # The last complete checkpoint (epoch 1's end) stays and resumes.
    assert loop.TrainingLoop(_model(), tf.distribute.get_strategy(),
                             tmp_path / "cut").restore() == (1, 0)


def _fail_writes(monkeypatch, number=errno.ENOSPC):
    def write(self, *args, **kwargs):
        raise OSError(number, os.strerror(number))
    monkeypatch.setattr(tf.train.Checkpoint, "write", write)


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_one_and_resumes(tmp_path,
                                                                             monkeypatch):
    reference, rows = _fit(tmp_path / "whole")
    _fit(tmp_path / "cut", epochs=1)
    with monkeypatch.context() as patch:
        _fail_writes(patch)
        with pytest.raises(loop.CheckpointError) as failed:
            _fit(tmp_path / "cut", epochs=2)
    message = str(failed.value)
    assert "\n" not in message and "No space left on device" in message
    assert "ckpt-2" in message and "ckpt-1 is the newest complete one" in message
    assert [pathlib.Path(p).name for p in loop.checkpoint_paths(tmp_path / "cut" /
                                                                "checkpoints")] == ["ckpt-1"]
    resumed, resumed_rows = _fit(tmp_path / "cut")
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert _without_seconds(resumed_rows) == _without_seconds(rows)


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EACCES])
def test_atomic_write_failures_name_the_file_and_keep_the_old_one(tmp_path, monkeypatch, number):
    path = tmp_path / "history.csv"
    path.write_text("old")

    def fail(self, data, *args, **kwargs):
        raise OSError(number, os.strerror(number), str(self))
    monkeypatch.setattr(pathlib.Path, "write_text", fail)
    with pytest.raises(rundir.WriteError) as failed:
        rundir.atomic_write(path, "new")
    assert str(path) in str(failed.value) and os.strerror(number) in str(failed.value)
    monkeypatch.undo()
    assert path.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_write_failure_reads_tensorflow_errors_too():
    error = tf.errors.ResourceExhaustedError(None, None, "runs/x/ckpt-3.index; No space left "
                                             "on device")
    assert rundir.write_failure(error) == "No space left on device (errno 28)"
    assert rundir.write_failure(ValueError("bad value")) is None


def _hold_lock(run_dir):
    """Another process holding `run_dir`'s lock (until killed)."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from tfimb.runtime import rundir; "
        f"lock = rundir.RunLock({str(run_dir)!r}).acquire(); print('held', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_one_writer_per_run_directory_and_a_killed_holder_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    holder = _hold_lock(run_dir)
    try:
        with pytest.raises(rundir.RunDirError) as refused:
            rundir.RunLock(run_dir).acquire()
        assert f"in use by process {holder.pid}" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock.
        holder.wait()
    lock = rundir.RunLock(run_dir).acquire()
    lock.release()


def test_a_refused_lock_leaves_no_directory_behind(tmp_path):
    lock = rundir.RunLock(tmp_path / "new").acquire()
    assert lock.created and (tmp_path / "new" / rundir.LOCK).exists()
    lock.release(remove_created=True)
    assert not (tmp_path / "new").exists()


# -- the command line, as a user meets it -------------------------------------------------------


def test_a_second_command_on_a_directory_in_use_is_refused_before_tensorflow_loads(
        tmp_path, monkeypatch, capsys):
    """`tfimb train` on a directory another process holds: one line naming the holder, status
    1, before TensorFlow loads. (SIGTERM through the command line, with the printed command
    finishing the run, is tests/test_chaos.py.)"""
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    holder = _hold_lock(tmp_path / "w")
    try:
        from tfimb.experiments import classify

        monkeypatch.setattr(classify, "run_job", None)  # Never reached.
        monkeypatch.chdir(tmp_path)
        for command in (["train", "tiny.yaml", "--workdir", "w", "--resume"],
                        ["flow", "train", "flow_default", "--workdir", "w"]):
            assert cli.main(command) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"w is in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()


def test_ctrl_c_before_training_is_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the data loads: no traceback, status 130, and no run to resume."""
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    from tfimb.experiments import classify

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(classify, "run_job", interrupted)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "tiny.yaml", "--workdir", "w"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tfimb: stopped by SIGINT (Ctrl-C)")
    assert "No unfinished run in w" in err


def test_a_full_disk_anywhere_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    from tfimb.experiments import classify

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "w/plots/curves.png")
    monkeypatch.setattr(classify, "run_job", full)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "tiny.yaml", "--workdir", "w"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("tfimb: cannot write w/plots/curves.png: No space left on device")


def _tmpfs(path, size):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    return mounted.returncode == 0


@pytest.mark.slow
def test_a_run_on_a_full_tmpfs_is_one_line_and_resumes_once_space_is_freed(tmp_path):
    """A real full disk where the test can mount a small tmpfs (root), else skipped (the
    injected failures above cover the paths)."""
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "8m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        # Fill most of it, leaving room for two of resnet8's checkpoints (0.6 MB each).
        (disk / "filler").write_bytes(b"\0" * (7000 * 1000))
        full = run_tfimb("train", "tiny.yaml", "--workdir", str(disk / "run"), cwd=tmp_path)
        assert full.returncode == 1, full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        line = full.stderr.strip().splitlines()[-1]
        assert "No space left on device" in line and str(disk / "run") in line
        assert not (disk / "run" / "results.json").exists()
        assert not list((disk / "run" / "checkpoints").glob("*_temp*"))  # No partial one.
        (disk / "filler").unlink()
        resumed = run_tfimb("train", "tiny.yaml", "--workdir", str(disk / "run"), "--resume",
                            cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert (disk / "run" / "results.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_signal_inside_a_finalizer_is_raised_after_it_not_printed_and_lost(capfd):
    """Python prints and drops an exception raised in `__del__`; the handler sends the signal
    again once the finalizer has returned."""
    class Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # The handler runs here, inside __del__.

    with preemption.installed():
        with pytest.raises(KeyboardInterrupt):
            finalizer = Finalizer()
            del finalizer
            time.sleep(2)
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.mark.parametrize("command, target, error, named", [
    (["export", "run"], "tfimb.experiments.export.export",
     lambda: tf.errors.ResourceExhaustedError(None, None, "saved_models/run/.1.tmp-x/model/"
                                              "variables; No space left on device"),
     "cannot write in saved_models: No space left on device (errno 28)"),
    (["report", "run", "--output", "out"], "tfimb.experiments.report.report",
     lambda: PermissionError(errno.EACCES, os.strerror(errno.EACCES), "out/table.md"),
     "cannot access out/table.md: Permission denied (errno 13)"),
])
def test_export_and_report_write_failures_are_one_line(monkeypatch, capsys, command, target,
                                                       error, named):
    def fail(*args, **kwargs):
        raise error()
    monkeypatch.setattr(target, fail)
    assert cli.main(command) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"tfimb: {named}")


def test_a_signal_inside_an_import_is_raised_after_it(tmp_path, monkeypatch):
    """An import interrupted halfway (a C extension in its initialisation) can crash the
    interpreter at exit: the signal is raised once the import has finished."""
    (tmp_path / "slow_module_for_tfimb_test.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.01)  # The handler runs here, inside the import.\n"
        "LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with preemption.installed():
        with pytest.raises(KeyboardInterrupt):
            import slow_module_for_tfimb_test
            assert slow_module_for_tfimb_test.LOADED  # The import completed first.
            time.sleep(2)
    assert not preemption._PENDING
