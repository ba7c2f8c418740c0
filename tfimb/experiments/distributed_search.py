"""Distributed `tfimb tune` on keras-tuner's chief/worker mechanism.

keras-tuner reads three environment variables: `KERASTUNER_TUNER_ID` ("chief" for the process
that serves the oracle, "tuner0", "tuner1", ... for the workers that train trials),
`KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT` (where the chief listens). `--chief
HOST:PORT` and `--worker HOST:PORT --worker-id N` set them; `--local-workers N` starts a chief
and N workers on 127.0.0.1 as child processes, waits for them, stops them all when one fails or
on Ctrl-C, and rewrites the reports as trials end.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any

from tfimb import _checks
from tfimb._checks import PathLike
from tfimb.config import ExperimentConfig, SearchConfig
from tfimb.experiments import trials
from tfimb.runtime.launch import LaunchError, check_count, free_port, supervise


def parse_address(arg: str, text: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), with an error in Keras' form."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _checks.invalid_value(arg, "HOST:PORT with a port in 1..65535", text)
    return host, int(port)


def set_environment(chief: str | None = None, worker: str | None = None,
                    worker_id: int | None = None) -> None:
    """Set keras-tuner's variables for `--chief` / `--worker --worker-id` (no-op without them)."""
    if worker_id is not None and worker is None:
        raise LaunchError("Invalid value for argument `--worker-id`. Expected it only with "
                          f"--worker HOST:PORT. Received: --worker-id={worker_id}")
    try:
        if chief is not None:
            host, port = parse_address("--chief", chief)
            tuner_id = "chief"
        elif worker is not None:
            host, port = parse_address("--worker", worker)
            if worker_id is None or worker_id < 0:
                raise _checks.invalid_value("--worker-id", "an integer >= 0 with --worker",
                                            worker_id)
            tuner_id = f"tuner{worker_id}"
        else:
            return
    except ValueError as error:
        raise LaunchError(str(error)) from None
    os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host,
                      KERASTUNER_ORACLE_PORT=str(port))


def run_local(args: argparse.Namespace, workdir: PathLike, cfg: ExperimentConfig,
              search: SearchConfig) -> dict[str, Any] | None:
    """Start a chief and `args.local_workers` workers on 127.0.0.1; return the best trial."""
    workers = check_count(args.local_workers)
    trials.validate(cfg, search)
    workdir = pathlib.Path(workdir)
    trials.check_workdir(workdir, cfg, search)  # Before the children, which only compare.
    address = f"127.0.0.1:{free_port()}"
    base = [sys.executable, "-m", "tfimb", "tune", str(args.config), "--workdir", str(workdir)]
    for text in args.set:
        base += ["--set", text]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    commands = [("chief", base + ["--chief", address], env)]
    commands += [(f"worker{i}", base + ["--worker", address, "--worker-id", str(i)], env)
                 for i in range(workers)]
    print(f"search on {address}: a chief and {workers} workers; logs in "
          f"{workdir / 'logs'}", flush=True)
    supervise(commands, workdir / "logs", poll=lambda: trials.write_reports(workdir, cfg, search),
              retry_hint=" The same command resumes the search.")
    return trials.write_reports(workdir, cfg, search)
