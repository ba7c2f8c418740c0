"""The run directory: its files, atomic writes and resume rules, shared by every experiment.

A run directory holds `config.yaml` (the resolved config) from its start and `results.json`,
written atomically, once the run has finished: a finished run is never overwritten, and an
unfinished one is continued only with `--resume` and the same config (keys that only say
where work runs, `PLACEMENT_KEYS`, may change; keys added to tfimb after the run started are
accepted at their defaults, which keep the behaviour the run had).
"""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import sys
import time

from tfimb.errors import TfimbError

# For type checkers only: at run time this module imports neither `typing`, NumPy nor the
# config package.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    from tfimb._checks import PathLike
    from tfimb.config import DistributeConfig

RESULTS = "results.json"
LOCK = ".lock"

# Write failures the user must fix where the files go: a full disk or quota, a missing
# permission, a read-only file system.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


class RunDirError(TfimbError, RuntimeError):
    """A run directory that cannot be used as asked (finished, resumed with a new config, in
    use by another process, or not writable)."""


class WriteError(RunDirError, OSError):
    """A file of a run could not be written (a full disk, no permission): one line naming it."""


def write_failure(error: BaseException) -> str | None:
    """The cause, when `error` is a failure to write that the user must fix (`WRITE_ERRNOS`),
    from an OSError or from the text of TensorFlow's error (its C++ file system reports
    strerror), else None."""
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return f"{error.strerror or os.strerror(error.errno)} (errno {error.errno})"
    text = str(error)
    for number in WRITE_ERRNOS:
        if os.strerror(number) in text:
            return f"{os.strerror(number)} (errno {number})"
    return None


def write_error(path: PathLike, error: OSError) -> WriteError:
    """`error` (ENOSPC, EACCES, ...) as one line naming `path` and the cause."""
    cause = error.strerror or os.strerror(error.errno or 0)
    return WriteError(f"cannot write {path}: {cause} (errno {error.errno}). Free space (or fix "
                      "the permission) and run the command again; an interrupted run continues "
                      "with --resume from its last complete checkpoint.")


def atomic_write(path: PathLike, data: str | bytes) -> None:
    """Write text or bytes to `path` through a temporary file and a rename, so a crash never
    leaves a half-written file under the final name. A full disk or a missing permission
    raises `WriteError` naming `path`, the temporary file removed and any earlier `path` kept."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno in WRITE_ERRNOS:
            raise write_error(path, error) from None
        raise


class RunLock:
    """One writer per run directory: an exclusive `flock` on `run_dir/.lock`, which the OS
    releases when the process ends in any way (kill -9 included), so a dead holder never
    blocks the next run. The file names the holder (pid, host, command, start time) for the
    refusal's message; it is not removed (removing it would race with a new holder)."""

    def __init__(self, run_dir: PathLike) -> None:
        self.run_dir = pathlib.Path(run_dir)
        self.created = False  # Whether acquiring made the directory (removed on release).
        self._file = None

    def acquire(self) -> RunLock:
        import fcntl

        if not self.run_dir.is_dir():
            try:
                self.run_dir.mkdir(parents=True)
                self.created = True
            except FileExistsError:
                pass
            except OSError as error:
                if error.errno in WRITE_ERRNOS:
                    raise write_error(self.run_dir, error) from None
                raise
        path = self.run_dir / LOCK
        try:
            self._file = open(path, "a+")
        except OSError as error:
            if error.errno in WRITE_ERRNOS:
                raise write_error(path, error) from None
            raise
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._in_use(self._file)
            self._file.close()
            self._file = None
            raise error from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()} on {socket.gethostname()} "
                         f"(`{' '.join(sys.argv) or 'python'}`, started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        self._file.flush()
        return self

    def _in_use(self, file) -> RunDirError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        return RunDirError(f"{self.run_dir} is in use by {holder}. Wait for it to end or stop "
                           "it, or pass another --workdir.")

    def check_free(self) -> None:
        """Refuse at once (before TensorFlow loads) a directory another process holds; takes
        nothing and creates nothing."""
        import fcntl

        try:
            file = open(self.run_dir / LOCK)
        except OSError:
            return  # No lock file (or unreadable): acquiring will tell.
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._in_use(file) from None

    def release(self, remove_created: bool = False) -> None:
        """Unlock; with `remove_created`, also remove the directory if acquiring made it and
        it holds nothing else (a run refused before it started leaves nothing behind)."""
        if self._file is None:
            return
        if remove_created and self.created:  # Unlinked while still held: no other holder.
            (self.run_dir / LOCK).unlink(missing_ok=True)
            try:
                self.run_dir.rmdir()
            except OSError:
                pass
        self._file.close()
        self._file = None


def prepare_run_dir(run_dir: PathLike, config_text: str, resume: bool | Literal["auto"],
                    writable: bool = True, defaults_text: str | None = None) -> bool:
    """Create a run directory holding `config.yaml`, or check one to resume; True if resuming.

    A finished run (results.json) is never reused; an unfinished one needs `resume` (True, or
    "auto" to resume whenever the config matches) and the same config (`run_difference`).
    `writable=False` (a non-chief worker) only checks.
    """
    resuming = check_run_dir(run_dir, config_text, resume, defaults_text)
    if writable and not resuming:
        create_run_dir(run_dir, config_text)
    return resuming


def create_run_dir(run_dir: PathLike, config_text: str) -> None:
    """The run directory with its `config.yaml` (written atomically)."""
    run_dir = pathlib.Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise write_error(run_dir, error) from None
        raise
    atomic_write(run_dir / "config.yaml", config_text)


def check_run_dir(run_dir: PathLike, config_text: str, resume: bool | Literal["auto"],
                  defaults_text: str | None = None) -> bool:
    """`prepare_run_dir`'s refusals, writing nothing; True when the run is to be resumed."""
    run_dir = pathlib.Path(run_dir)
    config_path = run_dir / "config.yaml"
    if (run_dir / RESULTS).exists():
        raise RunDirError(f"{run_dir} holds a finished run ({RESULTS} exists); it is never "
                          "overwritten. Pass another --workdir, or delete the directory.")
    if config_path.exists():
        if not resume:
            raise RunDirError(f"{run_dir} holds an unfinished run. Pass --resume to continue "
                              "it, or another --workdir to start afresh.")
        difference = run_difference(config_path.read_text(), config_text, defaults_text)
        if difference is not None:
            raise RunDirError(f"--resume refused: the config differs from {config_path} "
                              f"({difference}). Resume with the same config and overrides, or "
                              "use another --workdir.")
        return True
    if resume is True:
        raise RunDirError(f"--resume: nothing to resume in {run_dir} (no config.yaml).")
    return False


# Keys that say where a run's work is done, not what it computes (the tf.data service builds
# the batches the trainer would): a run resumes with them changed.
PLACEMENT_KEYS = (("data", "service"),)


def run_difference(recorded: str, config_text: str,
                   defaults_text: str | None = None) -> str | None:
    """None when `config_text` continues the run whose config.yaml is `recorded`, else the
    first difference (`key: recorded -> new`).

    The same config, but for `PLACEMENT_KEYS`, and but for keys that `recorded` lacks (added
    to tfimb after the run started) whose value is their default in `defaults_text` (the
    experiment's default config): a long run resumes under a newer tfimb.
    """
    if recorded == config_text:
        return None
    import yaml

    try:
        old, new = yaml.safe_load(recorded), yaml.safe_load(config_text)
        defaults = yaml.safe_load(defaults_text) if defaults_text else None
    except yaml.YAMLError as error:
        return f"unreadable YAML: {str(error).splitlines()[0]}"
    for section, key in PLACEMENT_KEYS:
        for tree in (old, new):
            if isinstance(tree, dict) and isinstance(tree.get(section), dict):
                tree[section].pop(key, None)
    return _difference(old, new, defaults, "")


def _difference(old: object, new: object, defaults: object, path: str) -> str | None:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return None if old == new else f"{path or 'config'}: {old!r} -> {new!r}"
    for key in sorted(set(old) | set(new), key=str):
        name = f"{path}.{key}" if path else str(key)
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if key not in old:
            if isinstance(defaults, dict) and key in defaults and new[key] == default:
                continue  # Added since the run started, at its default.
            return f"{name}: absent -> {new[key]!r}"
        if key not in new:
            return f"{name}: {old[key]!r} -> absent"
        found = _difference(old[key], new[key], default, name)
        if found is not None:
            return found
    return None


def resume_mode(distribute: DistributeConfig, resume: bool) -> bool | Literal["auto"]:
    """`resume` for `prepare_run_dir`: multi-worker runs resume an unfinished run of the same
    config without --resume ("auto"), since a worker that died is restarted with the command
    that started it."""
    return "auto" if distribute.strategy == "multi_worker" else resume
