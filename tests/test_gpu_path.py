"""The GPU path, run on a CPU: what `mixed_precision: auto` picks where TensorFlow lists a GPU
(mixed_float16, with Keras' dynamic loss scaling), through a shipped seed-protocol config and
tensorflow-datasets (`tfds.testing.mock_data`).

A CPU cannot show that CUDA kernels run; it does run every other part of that path: the float16
policy, the loss-scale optimizer under the momentum-corrected learning-rate schedule and
deferred re-weighting, the fused batch norm in float16, and the loss-scale state through a
checkpoint and `--resume`.
"""

import pathlib

import numpy as np
import pytest
import yaml

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

from tfimb import config
from tfimb.experiments import classify
from tfimb.runtime import devices

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ldam_drw runs the most machinery of the seed configs: cosine head, LDAM margins and the
# deferred re-weighting callback beside the learning-rate schedule.
SHIPPED = ROOT / "configs" / "cifar10_imbalanced" / "ldam_drw.yaml"
# Smaller, never different: the protocol's keys stay as shipped but for size and length. Small
# because float16 convolutions on a CPU are emulated: this test took 95 s on an Intel Xeon at
# 20 / 4 images per class (200 mock examples), which took the suite past 10 minutes, and about
# 69 s at 6 / 2 against 41 s at 4 / 1 (this size; both measured beside a training run).
SMALL = ["mixed_precision=mixed_float16", "model.name=resnet8", "imbalance.majority_count=4",
         "imbalance.minority_count=1", "train.batch_size=16", "train.epochs=2",
         "train.lr_boundaries=[1, 2]", "loss.drw_epoch=1"]


def test_auto_precision_is_mixed_float16_where_tensorflow_lists_a_gpu(monkeypatch):
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else real(kind))
    assert devices.resolve_precision("auto") == "mixed_float16"
    assert config.resolve(yaml.safe_load(SHIPPED.read_text())).mixed_precision == "auto"


class _Inspect(keras.callbacks.Callback):
    """Records the loss scale and the policy each epoch; raises at `stop_at` (a crash). Sets
    the scale to 1024 after the first step, so that a resumed run that started from Keras'
    initial 32768 instead of the checkpoint's scale would show it."""
    def __init__(self, stop_at=None):
        super().__init__()
        self.stop_at, self.scales, self.policies, self.steps = stop_at, [], [], 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.stop_at:
            raise KeyboardInterrupt("simulated crash")

    def on_train_batch_end(self, batch, logs=None):
        if self.steps == 0 and int(self.model.optimizer.iterations) == 1:
            self.model.optimizer.dynamic_scale.assign(1024.0)
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.scales.append(float(keras.ops.convert_to_numpy(optimizer.dynamic_scale)))
        self.policies.append(self.model.dtype_policy.name)


def _train(run_dir, callback, resume=False):
    cfg = config.resolve(yaml.safe_load(SHIPPED.read_text()), SMALL)
    with tfds.testing.mock_data(num_examples=80):
        return classify.run(cfg, run_dir, resume=resume, verbose=0, callbacks=[callback])


@pytest.mark.slow
def test_a_seed_config_trains_and_resumes_under_mixed_float16(tmp_path):
    whole = _Inspect()
    results = _train(tmp_path / "whole", whole)
    assert whole.policies == ["mixed_float16"] * 2
    assert whole.scales[0] <= 1024 and all(np.isfinite(whole.scales))
    assert np.isfinite(results["accuracy"]["all"])
    model = keras.saving.load_model(tmp_path / "whole" / "model.keras")
    backbone = model.get_layer("resnet8")
    assert backbone.get_layer("stem_conv").dtype_policy.name == "mixed_float16"
    assert model.output.dtype == "float32"  # The logits: the loss sees float32.

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", _Inspect(stop_at=1))
    resumed = _Inspect()
    _train(tmp_path / "cut", resumed, resume=True)
    assert resumed.scales == whole.scales[1:]  # The loss scale came back from the checkpoint.
    cut = keras.saving.load_model(tmp_path / "cut" / "model.keras")
    for a, b in zip(model.get_weights(), cut.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
