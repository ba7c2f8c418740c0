"""The tf.data service: training input read, decoded and augmented by other processes or hosts.

When input preprocessing outgrows the trainer's CPUs (ImageNet-size JPEGs, the random-resized
crop), `data.service: grpc://HOST:PORT` sends each epoch's training pipeline to a tf.data
service dispatcher, whose workers build the batches (`tfimb data-service` starts a dispatcher
and workers; `tfimb train --local-data-workers N` starts them inside the trainer).

The batches are the ones the trainer would build itself. The epoch is addressed batch by batch
(`tfimb.data.pipeline.IndexedEpoch`): the pipeline's source is the range of batch indices,
which the service splits dynamically between its workers (`distributed_epoch`), and batch k is
a function of (seed, epoch, k) alone. Workers finish batches out of order, so the trainer puts
them back in order as they arrive; a batch the service never delivers (its worker restarted:
dynamic sharding visits each split at most once) is built locally, and so is the rest of an
epoch when the service stalls (`STALL_SECONDS` without a batch) or fails. Training with the service,
without it, or resumed mid-epoch on another one therefore sees the same batches in the same
order, and `--resume` accepts a changed `data.service`.

Evaluation data stays local (small, and read in order). The service reads image folders
(`data.source: folder`), whose examples are read by position; the folder must be at the same
path on the service's hosts as on the trainer's.
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from tfimb.config.common import bad_service_address
from tfimb.data.splits import DataError, reason

if TYPE_CHECKING:
    import tensorflow as tf

    from tfimb.data.pipeline import IndexedEpoch

# Seconds without a batch from the service before the trainer builds the epoch's rest itself.
STALL_SECONDS = 300.0


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of a `grpc://HOST:PORT` service address."""
    problem = bad_service_address(address)
    if problem:
        raise DataError(problem)
    host, port = str(address)[len("grpc://"):].rsplit(":", 1)
    return host, int(port)


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail now, in one line, when no dispatcher answers at `address` (the tf.data service's
    own client would retry for a long time before saying so)."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise DataError(f"data.service: no tf.data service dispatcher answers at {address} "
                        f"({error.strerror or error}). Start one with `tfimb data-service "
                        f"--port {port} --workers N` on {host}, or use --local-data-workers N."
                        ) from None


def in_order(epoch: IndexedEpoch, address: str, first: int = 0,
             stall_seconds: float | None = None) -> tf.data.Dataset:
    """Batches first.. of `epoch` (float32 images, int32 labels), built by the tf.data service
    at `address` and handed on in index order. When the service delivers nothing for
    `stall_seconds` (default `STALL_SECONDS`: its workers died, and the service waits for
    them) or fails, the rest of the epoch is built here, after one line on stderr saying so."""
    import tensorflow as tf

    remote = epoch.batches(first).apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=address))
    local_spec = epoch.batches(0, 0).element_spec
    patience = STALL_SECONDS if stall_seconds is None else stall_seconds

    def ordered() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from _reorder(_arrivals(remote, address, patience), first, epoch.num_batches,
                            lambda k: _local_batch(epoch, k))

    ds = tf.data.Dataset.from_generator(ordered, output_signature=local_spec[1:])
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)


def _arrivals(remote: tf.data.Dataset, address: str, stall_seconds: float
              ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(k, images, labels) as the service delivers them, read on a thread of their own, until
    the epoch ends, the service fails, or nothing arrives for `stall_seconds`."""
    arrived: queue.Queue[Any] = queue.Queue(maxsize=8)
    end = object()

    def read() -> None:
        try:
            for k, x, y in remote:
                arrived.put((int(k), x.numpy(), y.numpy()))
            arrived.put(end)
        except Exception as error:  # The service's own error, reported below.
            arrived.put(error)

    threading.Thread(target=read, daemon=True, name="tfimb-data-service").start()
    while True:
        try:
            item = arrived.get(timeout=stall_seconds)
        except queue.Empty:
            why = f"no batch for {stall_seconds:.0f} s: are its workers running?"
            item = None
        else:
            if item is end:
                return
            why = f"it failed: {reason(item)}" if isinstance(item, Exception) else ""
        if why:
            print(f"tfimb: tf.data service at {address}: {why} The rest of this epoch's "
                  "batches are built here (the same batches).", file=sys.stderr, flush=True)
            return
        yield item


def _reorder(arrivals: Iterator[tuple[int, Any, Any]], first: int, end: int,
             build: Any) -> Iterator[tuple[Any, Any]]:
    """Items (k, x, y) arriving in any order, yielded as (x, y) in order of k from `first` to
    `end`; a k that never arrives is made by `build(k)`."""
    pending: dict[int, tuple[Any, Any]] = {}
    wanted = first
    for k, x, y in arrivals:
        pending[k] = (x, y)
        while wanted in pending:
            yield pending.pop(wanted)
            wanted += 1
    for k in range(wanted, end):
        yield pending.pop(k) if k in pending else build(k)


def _local_batch(epoch: IndexedEpoch, k: int) -> tuple[np.ndarray, np.ndarray]:
    _, x, y = next(iter(epoch.batches(k, k + 1)))
    return x.numpy(), y.numpy()


class Service:
    """A tf.data service dispatcher and/or workers in this process (they stop with it).

    `port`: the dispatcher's (0: any free one); `workers`: how many workers to start, for this
    process's dispatcher or for `dispatcher` (HOST:PORT of another host's); `host`: the name
    clients reach this host's workers by.
    """

    def __init__(self, port: int = 0, workers: int = 0, dispatcher: str | None = None,
                 host: str = "localhost", worker_port: int = 0) -> None:
        import tensorflow as tf

        service = tf.data.experimental.service
        self.dispatcher = None
        if dispatcher is None:
            self.dispatcher = service.DispatchServer(service.DispatcherConfig(port=port))
            dispatcher = f"{host}:{self.dispatcher.target.rsplit(':', 1)[1]}"
        self.address = f"grpc://{dispatcher}"
        self.workers = [service.WorkerServer(service.WorkerConfig(
            dispatcher_address=dispatcher, worker_address=f"{host}:%port%",
            port=worker_port + i if worker_port else 0)) for i in range(workers)]

    def serve_forever(self) -> None:
        """Serve until the process is interrupted (KeyboardInterrupt) or killed. Python sleeps
        here rather than in the servers' `join`, which would not see Ctrl-C."""
        while True:
            time.sleep(3600)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
