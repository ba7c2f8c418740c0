"""Local process groups: `--local-workers N` of `tfimb train`, `tfimb flow train` and `tfimb tune`.

`supervise` starts the processes, waits for them all, and stops every one of them as soon as one
fails or on Ctrl-C (a multi-worker job cannot go on without a member: the others would wait in
their collectives). `multi_worker_environments` writes the `TF_CONFIG` of N workers on
127.0.0.1 for `tf.distribute.MultiWorkerMirroredStrategy`.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import time

from tfimb.errors import TfimbError

# For type checkers only: at run time this module imports neither `typing` nor NumPy.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Mapping, Sequence

    from tfimb._checks import PathLike

    #: One process of a group: (name, argv, environment; None: this process's).
    Command = tuple[str, Sequence[str], Mapping[str, str] | None]


class LaunchError(TfimbError, RuntimeError):
    """A process group that could not be started or one of whose processes failed."""


# A tfimb process's status after a signal stopped it with its checkpoint saved
# (tfimb.runtime.preemption).
PREEMPTED = {143: "SIGTERM", 130: "SIGINT"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_count(workers: int, minimum: int = 1) -> int:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < minimum:
        raise LaunchError("Invalid value for argument `--local-workers`. Expected an integer "
                          f">= {minimum}. Received: --local-workers={workers}")
    return workers


def multi_worker_environments(workers: int) -> list[str]:
    """One TF_CONFIG per worker of a cluster of `workers` processes on free local ports."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    return [json.dumps({"cluster": {"worker": addresses},
                        "task": {"type": "worker", "index": i}}) for i in range(workers)]


# Seconds the workers get to checkpoint and exit after the launcher is interrupted (Ctrl-C,
# a scheduler's SIGTERM): they finish the step or evaluation under way first. A second
# interruption kills them at once.
PREEMPTION_GRACE = 300.0


def stop(processes: Sequence[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """Terminate the running processes; kill those still alive after `grace` seconds, or at
    once on an interruption while waiting (which is raised again)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    try:
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    except KeyboardInterrupt:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        raise


def supervise(commands: Sequence[Command], log_dir: PathLike, console: str | None = None,
              poll: Callable[[], object] | None = None, retry_hint: str = "") -> None:
    """Run `commands` ([(name, argv, env)]) until all exit; raise LaunchError when one fails.

    Each process writes to `log_dir/<name>.log`, except `console` (a name), which keeps this
    process's stdout and stderr. `log_dir/<name>.pid` holds each pid while it runs. `poll()` is
    called about every 5 seconds.
    """
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    processes, logs = [], []

    def failure(name, code, running):
        where = "above" if name == console else f"in {log_dir / (name + '.log')}"
        if code in PREEMPTED:  # tfimb saved a checkpoint at the step all workers agreed on.
            error = LaunchError(f"{name} stopped on {PREEMPTED[code]} (status {code}); in "
                                "training the workers saved a checkpoint at the step they "
                                f"agreed on first (its output is {where}).{retry_hint}")
            error.exit_code = code
            return error
        stopped = " Stopped the others." if running else ""
        return LaunchError(f"{name} exited with status {code} (its output is {where})."
                           f"{stopped}{retry_hint}")

    try:
        for name, argv, env in commands:
            out = None
            if name != console:
                out = open(log_dir / f"{name}.log", "a")
                logs.append(out)
            processes.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT
                                              if out else None, env=env))
            (log_dir / f"{name}.pid").write_text(str(processes[-1].pid))
        last_poll = time.monotonic()
        while any(p.poll() is None for p in processes):
            for (name, _, _), process in zip(commands, processes):
                if process.poll() not in (None, 0):
                    raise failure(name, process.returncode, True)
            if poll is not None and time.monotonic() - last_poll > 5:
                poll()
                last_poll = time.monotonic()
            time.sleep(0.5)
        for (name, _, _), process in zip(commands, processes):
            if process.returncode != 0:
                raise failure(name, process.returncode, False)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM here: the workers checkpoint first.
        stop(processes, PREEMPTION_GRACE)
        raise
    finally:
        stop(processes)
        for out in logs:
            out.close()
        for name, _, _ in commands:
            (log_dir / f"{name}.pid").unlink(missing_ok=True)


def run_local_workers(argv: Sequence[str], workers: int, log_dir: PathLike) -> None:
    """Run `argv` (a `tfimb` command with distribute.strategy=multi_worker) as `workers` local
    workers; worker 0 (the chief) prints to this console, the others log to `log_dir`."""
    envs = multi_worker_environments(check_count(workers))
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    commands = [(f"worker{i}", argv, {**base, "TF_CONFIG": tf_config})
                for i, tf_config in enumerate(envs)]
    print(f"{workers} local workers; worker0 is the chief, the others log to {log_dir}",
          flush=True)
    supervise(commands, log_dir, console="worker0",
              retry_hint=" The same command resumes from the last checkpoint.")
