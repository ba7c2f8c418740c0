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
dynamic sharding visits each split at most once) is built locally. Training with the service,
without it, or resumed mid-epoch on another one therefore sees the same batches in the same
order, and `--resume` accepts a changed `data.service`.

Evaluation data stays local (small, and read in order). The service reads image folders
(`data.source: folder`), whose examples are read by position; the folder must be at the same
path on the service's hosts as on the trainer's.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from tfimb.config.common import SERVICE_ADDRESS
from tfimb.data.splits import DataError

if TYPE_CHECKING:
    import tensorflow as tf

    from tfimb.data.pipeline import IndexedEpoch

def host_port(address: str) -> tuple[str, int]:
    """(host, port) of a `grpc://HOST:PORT` service address."""
    if not SERVICE_ADDRESS.match(str(address)):
        raise DataError("Invalid value for key `data.service`. Expected grpc://HOST:PORT (a "
                        f"tf.data service dispatcher). Received: data.service={address!r}")
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


def in_order(epoch: IndexedEpoch, address: str, first: int = 0) -> tf.data.Dataset:
    """Batches first.. of `epoch` (float32 images, int32 labels), built by the tf.data service
    at `address` and handed on in index order."""
    import tensorflow as tf

    remote = epoch.batches(first).apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=address))
    local_spec = epoch.batches(0, 0).element_spec

    def ordered() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from _reorder(((int(k), x.numpy(), y.numpy()) for k, x, y in remote),
                            first, epoch.num_batches, lambda k: _local_batch(epoch, k))

    ds = tf.data.Dataset.from_generator(ordered, output_signature=local_spec[1:])
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)


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

    def join(self) -> None:
        """Serve until the process is stopped."""
        (self.dispatcher or self.workers[0]).join()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
