"""The tf.data service across processes: `tfimb data-service` as a dispatcher and as workers
for it, serving a trainer in another process; 2 multi-worker trainer processes, each with its
own local service. (Apart from tests/test_data_service.py so that the two files' subprocess
runs share the suite's two pytest-xdist processes.)"""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import run_tfimb
from test_data_service import _free_port, _train_config, _weights
from test_data_stream import _folder


@pytest.mark.slow
def test_two_local_workers_each_with_a_service_train_like_one_process(tmp_path):
    """multi_worker: each worker sends its own share of every global batch to its own local
    service; with the global batch's batch-norm statistics the run equals one process."""
    root = _folder(tmp_path / "data", per_class=(12, 10, 8))
    _train_config(tmp_path, root, {"sync_batch_norm": True})
    even = ["--set", "imbalance.minority_count=2"]  # 24 images: 3 whole global batches.
    one = run_tfimb("train", "tiny.yaml", "--workdir", "one", *even, cwd=tmp_path)
    two = run_tfimb("train", "tiny.yaml", "--workdir", "two", "--local-workers", "2",
                    "--local-data-workers", "1", *even, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two")]
    assert [r["replicas"] for r in results] == [1, 2]
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    for a, b in zip(_weights(tmp_path / "one"), _weights(tmp_path / "two")):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a) + 1e-6


def _start(*argv):
    """`tfimb data-service ARGV` in its own process, and its first line (once it serves)."""
    process = subprocess.Popen([sys.executable, "-m", "tfimb", "data-service", *map(str, argv)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return process, process.stdout.readline()


def test_tfimb_data_service_on_two_processes_serves_a_trainer(tmp_path):
    """The several-host layout on one machine: a dispatcher alone, workers in another process
    (as on another host), and the trainer in a third."""
    root = _folder(tmp_path / "data", per_class=(12, 10, 8))
    port = _free_port()
    dispatcher, line = _start("--port", port, "--workers", 0, "--host", "localhost")
    workers = None
    try:
        assert f"a dispatcher at grpc://localhost:{port}, 0 worker(s) here" in line, line
        workers, line = _start("--dispatcher", f"localhost:{port}", "--workers", 2,
                               "--host", "localhost")
        assert f"workers for the dispatcher at grpc://localhost:{port}, 2 worker(s)" in line
        _train_config(tmp_path, root, service=f"grpc://localhost:{port}")
        result = run_tfimb("train", "tiny.yaml", "--workdir", "run", "--set", "train.epochs=1",
                           cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "tf.data service at" not in result.stderr  # No stall, no local fallback.
    finally:
        codes = []
        for process in (workers, dispatcher):  # Ctrl-C stops each cleanly, workers first.
            if process is not None:
                process.send_signal(signal.SIGINT)
                codes.append(process.wait(timeout=120))
    assert json.loads((tmp_path / "run" / "results.json").read_text())["accuracy"]["all"] >= 0
    assert codes == [0, 0]
    assert "tf.data service: stopped." in dispatcher.stdout.read()
