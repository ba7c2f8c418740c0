"""Preemption and Ctrl-C: a run stops at a step boundary with a checkpoint, and says so in a line.

SIGTERM is what Slurm and Kubernetes send before SIGKILL, and SIGINT is Ctrl-C. While
`TrainingLoop.fit` trains (`StopRequests`), the first of either only records itself: the loop
finishes the step (or the evaluation) under way, checkpoints the current (epoch, step), and
raises `Preempted`, which `tfimb` prints as one line (where it saved, and the command that
continues) before exiting with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT).
`--resume` then continues from that step exactly, as from an epoch's checkpoint. A second
signal stops at once; the last complete checkpoint stays.

Under several workers the step to save at must be the same on every worker (saving takes
collectives), so there TensorFlow's own mechanism decides it:
`tf.distribute.experimental.PreemptionCheckpointHandler` watches SIGTERM on every worker, agrees
on the step through the coordination service, and calls tfimb's save there (its `save_fn`);
SIGINT is turned into SIGTERM so that Ctrl-C takes the same path.

Outside training (start-up, saving, export, report, a search between trials), `installed`
makes SIGTERM raise `Terminated`, a `KeyboardInterrupt` as Ctrl-C's is, and `tfimb` prints
either as one line (`describe`). Both derive from `KeyboardInterrupt`, not `Exception`, so that
no `except Exception` on the way (keras-tuner's trial runner has one) swallows them.

This module imports no TensorFlow at import time (the command line installs it first).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training (or a second signal inside it): stop now, like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum


class Preempted(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint at `where` (epoch, step)."""

    def __init__(self, signum: int, checkpoint: str, epoch: int, step: int,
                 steps_per_epoch: int) -> None:
        where = (f"after epoch {epoch}" if step == 0 else
                 f"at step {step} of {steps_per_epoch} in epoch {epoch + 1}")
        super().__init__(f"stopped by {NAMES.get(signum, f'signal {signum}')} {where}; "
                         f"checkpoint {checkpoint} saved")
        self.signum, self.checkpoint = signum, checkpoint


def exit_status(interrupt: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by it."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))


def _unsafe_to_raise(frame: Any) -> bool:
    """Whether `frame` runs where an exception would not end the command cleanly: inside a
    `__del__` (Python prints it as "Exception ignored in ..." and drops it) or inside an import
    (a C extension interrupted in its initialisation can crash the interpreter at exit)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


# Signals sent again after a finalizer or an import (`_stop_now`); cancelled when `tfimb`
# returns, so that none arrives while the interpreter shuts down.
_PENDING: list[threading.Timer] = []


def _stop_now(signum: int, frame: Any) -> None:
    """Raise `KeyboardInterrupt` (SIGINT) or `Terminated`, or, inside a finalizer or an import,
    send the signal again a moment later, when it has returned."""
    if _unsafe_to_raise(frame):
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        timer.daemon = True
        _PENDING.append(timer)
        timer.start()
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Within: SIGTERM raises `Terminated`, and SIGINT `KeyboardInterrupt` even where the
    process was started with SIGINT ignored (a background job), so that no signal ends `tfimb`
    without its line; never inside a finalizer or an import (`_stop_now`). Main thread only
    (where Python runs signal handlers); the previous handlers come back after, and signals
    still to be sent again are cancelled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _stop_now)
    signal.signal(signal.SIGINT, _stop_now)
    try:
        yield
    finally:
        while _PENDING:
            _PENDING.pop().cancel()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopRequests:
    """The signals received while training, for the loop to act on at a step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _record(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # A second signal: stop now.
            _stop_now(signum, frame)
            return
        self.signum = signum


@contextlib.contextmanager
def deferred(multi_worker: bool = False) -> Iterator[StopRequests]:
    """Within: SIGTERM and SIGINT are recorded in the `StopRequests` yielded (single process),
    or, under several workers, SIGINT is re-sent as SIGTERM for TensorFlow's handler. The
    previous handlers come back after."""
    requests = StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if multi_worker:
        # PreemptionCheckpointHandler installs its own SIGTERM handler when it is created.
        signal.signal(signal.SIGINT, lambda signum, frame: signal.raise_signal(signal.SIGTERM))
    else:
        signal.signal(signal.SIGTERM, requests._record)
        signal.signal(signal.SIGINT, requests._record)
    try:
        yield requests
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# The process's PreemptionCheckpointHandler: one per process, since its watcher threads wait on
# cluster-wide keys that a second handler would race for (a job of several runs trains several
# loops in one process); each loop points it at its own save and stop.
_HANDLER: dict[str, Any] = {}


def multi_worker_handler(strategy: Any, save: Callable[[], str],
                         stopped: Callable[[int, str], None]) -> Callable[[], None]:
    """TensorFlow's `PreemptionCheckpointHandler` for `strategy` (several workers), as a
    function to call after every step on every worker: on SIGTERM at any worker, every worker
    calls `save()` (tfimb's checkpoint at the current step, its path returned) at the same step,
    then `stopped(signum, path)`, which raises `Preempted`. Later calls (the next run of a job)
    reuse the process's handler with their own `save` and `stopped`."""
    import tempfile

    import tensorflow as tf

    _HANDLER.update(save=save, stopped=stopped)
    if "check" in _HANDLER:
        return _HANDLER["check"]
    saved: list[str] = []
    config = tf.distribute.experimental.TerminationConfig(
        exit_fn=lambda: _HANDLER["stopped"](signal.SIGTERM, saved[-1] if saved else ""),
        save_fn=lambda: saved.append(_HANDLER["save"]()))
    # The handler restores from and counts steps in a checkpoint of its own, which tfimb
    # never writes (save_fn writes tfimb's): an empty one in a scratch folder, removed at exit
    # (a non-chief handler deletes it itself when it stops).
    scratch = tempfile.mkdtemp(prefix="tfimb-preemption-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver, tf.train.Checkpoint(), scratch, config)

    def check() -> None:
        # When it saves, the handler reads its own deprecated step counter, and TensorFlow
        # would print a deprecation warning on the console.
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel("ERROR")
        try:
            handler.save_checkpoint_if_preempted()
        finally:
            logger.setLevel(level)

    _HANDLER.update(check=check, handler=handler)
    return check
