"""The tf.data service path (`data.service`, `--local-data-workers`): the batches a trainer
builds itself, built by service workers and put back in order; exact resume; batches the
service loses made locally; the config and command-line errors. Across several processes:
tests/test_data_service_processes.py."""

import json
import socket

import keras
import numpy as np
import pytest
import yaml

from cli_helpers import run_tfimb
from tfimb import cli, config, data
from tfimb.data import service
from tfimb.runtime import rundir
from test_data_stream import _folder


@pytest.fixture(scope="module")
def local_service():
    """A dispatcher and two workers in this process."""
    server = service.Service(workers=2)
    yield server
    server.stop()


def _streamed(root):
    raw = {"data": {"source": "folder", "dir": str(root), "validation_per_class": 1},
           "imbalance": {"minority": [2], "minority_count": 2}}
    cfg = config.resolve(raw)
    return data.load(cfg.data, cfg.imbalance, stream=True)


def _batches(ds):
    return [(np.asarray(x), np.asarray(y)) for x, y in ds]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("shards", [1, 2])
def test_batches_addressed_by_index_are_the_pipelines_batches(tmp_path, shards):
    train = _streamed(_folder(tmp_path)).train
    for shard in range(shards):
        for epoch in (0, 3):
            local = _batches(data.pipeline(train, 3, True, seed=5, epoch=epoch,
                                           drop_remainder=shards > 1, num_shards=shards,
                                           shard_index=shard))
            indexed = data.indexed_epoch(train, 3, 5, epoch, drop_remainder=shards > 1,
                                         num_shards=shards, shard_index=shard)
            assert indexed.num_batches == len(local)
            built = [(x.numpy().astype(np.float32), y.numpy())
                     for _, x, y in indexed.batches()]
            _assert_same(built, local)
            ks = [int(k) for k, _, _ in indexed.batches(2)]
            assert ks == list(range(2, indexed.num_batches))


def test_the_service_delivers_the_local_batches_in_order_and_resumes_mid_epoch(
        tmp_path, local_service):
    train = _streamed(_folder(tmp_path, per_class=(30, 24, 18))).train
    epoch = data.indexed_epoch(train, 4, seed=1, epoch=2)
    local = _batches(data.pipeline(train, 4, True, seed=1, epoch=2))
    assert epoch.num_batches == len(local) > 8
    _assert_same(_batches(service.in_order(epoch, local_service.address)), local)
    _assert_same(_batches(service.in_order(epoch, local_service.address, first=5)), local[5:])


def test_a_service_without_workers_stalls_and_the_trainer_builds_the_epoch(tmp_path, capfd):
    train = _streamed(_folder(tmp_path)).train
    epoch = data.indexed_epoch(train, 4, seed=1, epoch=0)
    local = _batches(data.pipeline(train, 4, True, seed=1, epoch=0))
    idle = service.Service(workers=0)  # A dispatcher whose workers died: the service waits.
    try:
        _assert_same(_batches(service.in_order(epoch, idle.address, first=1,
                                               stall_seconds=2)), local[1:])
    finally:
        idle.stop()
    assert (f"tfimb: tf.data service at {idle.address}: no batch for 2 s: are its workers "
            "running? The rest of this epoch's batches are built here") in capfd.readouterr().err


def test_batches_the_service_never_delivers_are_built_locally():
    arrivals = [(2, "c", 2), (0, "a", 0), (4, "e", 4)]  # 1 and 3 lost; 5 never started.
    built = []

    def build(k):
        built.append(k)
        return (f"local{k}", k)

    out = list(service._reorder(iter(arrivals), 0, 6, build))
    assert [y for _, y in out] == [0, 1, 2, 3, 4, 5]
    assert built == [1, 3, 5]
    assert list(service._reorder(iter([(3, "d", 3), (2, "c", 2)]), 2, 4, build)) == \
        [("c", 2), ("d", 3)]


def _train_config(tmp_path, root, distribute=None, **data_keys):
    """A tiny streamed-folder run: resnet8, 2 epochs of 3-4 batches."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"source": "folder", "dir": str(root), "stream": True, **data_keys},
        "imbalance": {"minority": [2], "minority_count": 4},
        "model": {"name": "resnet8"},
        "train": {"epochs": 2, "batch_size": 8, "lr_values": [0.05], "lr_boundaries": []},
        "mixed_precision": "float32", "distribute": distribute or {}}))
    return path


def _weights(run_dir):
    return keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()


def test_training_through_local_data_workers_equals_training_without_them(tmp_path):
    """On 2 mirrored replicas (per-replica batches of a fixed size, read per worker)."""
    root = _folder(tmp_path / "data", per_class=(12, 10, 8))
    _train_config(tmp_path, root, {"strategy": "mirrored", "num_cpu_devices": 2})
    plain = run_tfimb("train", "tiny.yaml", "--workdir", "plain", cwd=tmp_path)
    served = run_tfimb("train", "tiny.yaml", "--workdir", "served", "--local-data-workers", "2",
                       cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert served.returncode == 0, served.stderr[-3000:]
    assert "tf.data service: a dispatcher and 2 worker(s) at grpc://localhost:" in served.stdout
    recorded = yaml.safe_load((tmp_path / "served" / "config.yaml").read_text())
    assert recorded["data"]["service"].startswith("grpc://localhost:")
    assert json.loads((tmp_path / "served" / "results.json").read_text())["replicas"] == 2
    for a, b in zip(_weights(tmp_path / "plain"), _weights(tmp_path / "served")):
        np.testing.assert_array_equal(a, b)  # The same batches in the same order.


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_resume_accepts_another_data_service_and_refuses_other_changes():
    def text(**keys):
        return config.dump(config.resolve({"data": {"source": "folder", "dir": "/d", **keys}}))

    base = text(service="grpc://a:1")
    assert rundir.run_difference(base, text(service="grpc://b:2")) is None
    assert rundir.run_difference(base, text()) is None
    assert rundir.run_difference(base, text(service="grpc://b:2", seed=1)) is not None


def _one_line(capsys, argv):
    """(exit status, the one stderr line) of `tfimb ARGV` run in this process."""
    code = cli.main([str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tfimb: "), lines
    return code, lines[0]


def test_unreachable_dispatcher_and_bad_service_keys_fail_in_one_line(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = _folder(tmp_path / "data")
    port = _free_port()  # Nobody listens there.
    _train_config(tmp_path, root, service=f"grpc://localhost:{port}")
    code, line = _one_line(capsys, ["train", "tiny.yaml", "--workdir", "run"])
    assert code == 1 and line.startswith(
        f"tfimb: data.service: no tf.data service dispatcher answers at grpc://localhost:{port}")
    assert not (tmp_path / "run").exists()
    for keys, message in (
            ({"service": "localhost:5050"}, r"Expected grpc://HOST:PORT.*"
                                            r"Received: data.service='localhost:5050'"),
            ({"service": "grpc://h:1", "stream": False}, r"`data.stream`. Expected auto or true "
                                                         r"with data.service"),
            ({"service": "grpc://h:1", "source": "tfds"}, r"data.source 'folder' only")):
        with pytest.raises(config.ConfigError, match=message):
            config.resolve({"data": {"source": "folder", "dir": str(root), **keys}})
    # data.load checks it too, once `auto` has resolved (here to tfds: no folder named).
    monkeypatch.delenv(config.DATA_DIR_VARIABLE, raising=False)
    with pytest.raises(config.ConfigError, match=r"data.source 'folder' only.*'tfds'"):
        data.load(config.DataConfig(source="auto", service="grpc://h:1"))
    with pytest.raises(config.ConfigError, match="flows train from images held in memory"):
        config.resolve_flow({"data": {"source": "folder", "dir": str(root),
                                      "service": "grpc://h:1"}})
    code, line = _one_line(capsys, ["train", "default", "--workdir", "digits",
                                    "--local-data-workers", "1"])
    assert code == 2 and "with --local-data-workers: Invalid value for key `data.service`" in line
    code, line = _one_line(capsys, ["train", "default", "--workdir", "digits",
                                    "--local-data-workers", "0"])
    assert code == 2 and "Received: --local-data-workers=0" in line
    code, line = _one_line(capsys, ["data-service", "--dispatcher", "nohost", "--workers", "1"])
    assert code == 1 and "Expected grpc://HOST:PORT" in line
    code, line = _one_line(capsys, ["data-service", "--dispatcher", "h:1", "--workers", "0"])
    assert code == 2 and "Received: --workers=0" in line
