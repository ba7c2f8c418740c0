import json
import pathlib

import numpy as np
import pytest

import keras

from cli_helpers import run_tfimb
from tfimb import config, data
from tfimb.experiments import density

# One scale (4 couplings) keeps the traced training step small; test_flows.py covers scales.
TINY = ["data.source=digits", "data.augment=false", "model.num_scales=1", "model.num_blocks=1",
        "model.num_filters=4",
        "train.epochs=2", "train.batch_size=32", "train.max_train_images=128",
        "train.max_eval_images=64", "train.flip=false"]


def _tiny(*overrides):
    return config.resolve_flow({}, TINY + list(overrides))


def test_flow_config_validation():
    with pytest.raises(config.ConfigError, match="Unknown key `model.num_layers`. Valid keys"):
        config.resolve_flow({"model": {"num_layers": 3}})
    with pytest.raises(config.ConfigError, match="train.batch_size=1"):
        config.resolve_flow({}, ["train.batch_size=1"])
    with pytest.raises(config.ConfigError, match="model.momentum"):
        config.resolve_flow({}, ["model.momentum=1.0"])
    cfg = config.resolve_flow({}, ["train.epochs=3"])
    assert cfg.model.num_blocks == 8 and cfg.train.batch_size == 64 and cfg.train.epochs == 3


def test_interpolation_manifold_corners():
    z = np.arange(4 * 2 * 2 * 1, dtype=np.float32).reshape(4, 2, 2, 1)
    grid = density.interpolation_latents(z, 3)
    assert grid.shape == (9, 2, 2, 1)
    np.testing.assert_allclose(grid[0], z[0], atol=1e-6)   # phi = phi' = 0
    np.testing.assert_allclose(grid[2], z[1], atol=1e-6)   # phi = 0, phi' = pi/2
    np.testing.assert_allclose(grid[6], z[2], atol=1e-6)   # phi = pi/2, phi' = 0
    np.testing.assert_allclose(grid[8], z[3], atol=1e-6)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.slow
def test_flow_training_resumes_and_a_nan_step_stops_it(tmp_path, monkeypatch):
    cfg = _tiny()
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        density.run(cfg, run_dir, verbose=0, callbacks=[_Interrupt()])
    assert not (run_dir / "results.json").exists()
    with pytest.raises(density.FlowRunError, match="--resume"):
        density.run(cfg, run_dir, verbose=0)
    results = density.run(cfg, run_dir, resume=True, verbose=0)
    assert results["epochs_completed"] == 2
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_bits_per_dim" in history[0]
    assert np.isfinite(results["bits_per_dim"]["test"]) and results["bits_per_dim"]["test"] > 0
    with pytest.raises(density.FlowRunError, match="finished run"):
        density.run(cfg, run_dir, resume=True, verbose=0)
    # The trained weights reload, without the data, to the same test bits/dim.
    assert results["image_shape"] == [8, 8, 1]
    loaded_cfg, model = density.load_run(run_dir)
    dataset = data.load(loaded_cfg.data, None)
    eval_images = density._subset(dataset.evaluation, loaded_cfg.train.max_eval_images,
                                     loaded_cfg.train.seed + 1)
    np.testing.assert_allclose(
        density.evaluate_images(model, eval_images, loaded_cfg.train.batch_size),
        results["bits_per_dim"]["test"], rtol=1e-5)
    images = dataset.evaluation.images[:8]
    # Export and sampling rebuild the model from the run directory alone.
    from tfimb.experiments import export

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(data, "load", no_data)
    _, reloaded = density.load_run(run_dir)
    assert reloaded.sample(2, 0.5, seed=0).shape == (2, 8, 8, 1)
    path = export.export(run_dir, "flow", 1, str(tmp_path / "saved"))
    assert (pathlib.Path(path) / "saved_model.pb").exists()
    monkeypatch.undo()

    # A non-finite step stops training with a clear message (eagerly here: the traced step
    # runs the same check) instead of updating the weights.
    scale = [w for w in model.weights if w.path.endswith("/scale")][0]
    scale.assign(np.full(scale.shape, np.nan, np.float32))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [w.numpy().copy() for w in model.weights if w.path.endswith("/v")]
    with pytest.raises(Exception, match="RealNVP: the training loss .* NaN or infinite"):
        model.train_step(images)
    for w, old in zip([w for w in model.weights if w.path.endswith("/v")], before):
        np.testing.assert_array_equal(w.numpy(), old)


@pytest.mark.slow
def test_flow_cli_end_to_end_on_two_local_workers(tmp_path, capsys):
    # Mirrored and default strategies run the same loop (tests/test_train.py, test_loop.py).
    args = ["flow", "train", "flow_default", "--workdir", str(tmp_path / "run"),
            "--local-workers", "2"]
    for item in TINY:
        args += ["--set", item]
    result = run_tfimb(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["replicas"] == 2 and results["epochs_completed"] == 2
    assert set(results["bits_per_dim"]) == {"train", "test"}
    assert (tmp_path / "run" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert results["config"]["distribute"]["strategy"] == "multi_worker"
    # The other subcommands in this process (a fresh interpreter per command costs seconds).
    from tfimb import cli

    for command in (["sample", str(tmp_path / "run"), "--n", "9", "--temperature", "0.5"],
                    ["interpolate", str(tmp_path / "run"), "--steps", "3"],
                    ["evaluate", str(tmp_path / "run")]):
        assert cli.main(["flow", *command]) == 0
    assert (tmp_path / "run" / "samples_T0.5.png").exists()
    assert (tmp_path / "run" / "interpolation.png").exists()
    assert "test bits/dim:" in capsys.readouterr().out
