"""Devices, strategy and precision of a run (TensorFlow is imported by the calls, not here).

`configure_devices` splits the CPU into logical devices for `mirrored` without a GPU;
`make_strategy` builds the configured `tf.distribute` strategy (`multi_worker` reads the
cluster from TF_CONFIG); `resolve_precision` picks the Keras dtype policy for `auto`.
"""

from __future__ import annotations

import os

from tfimb import platform_info
from tfimb.runtime.rundir import RunDirError

# For type checkers only: at run time this module imports neither `typing`, TensorFlow nor the
# config package (TensorFlow is imported by the calls).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import tensorflow as tf

    from tfimb.config import DistributeConfig


def configure_devices(distribute: DistributeConfig) -> None:
    """Split the CPU into logical devices for `mirrored` when there is no GPU (before TF runs)."""
    import tensorflow as tf

    if distribute.strategy != "mirrored" or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * distribute.num_cpu_devices)
    except RuntimeError:  # Already initialised: keep what exists if it is enough.
        if len(tf.config.list_logical_devices("CPU")) < distribute.num_cpu_devices:
            raise


_MULTI_WORKER = None


def make_strategy(distribute: DistributeConfig) -> tf.distribute.Strategy:
    """The configured strategy; `multi_worker` reads the cluster from TF_CONFIG (create it before
    any other TensorFlow work: its collectives are configured at start-up)."""
    import tensorflow as tf

    if distribute.strategy == "default":
        return tf.distribute.get_strategy()
    if distribute.strategy == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise RunDirError(
                "distribute.strategy=multi_worker reads the cluster from the TF_CONFIG "
                "environment variable, which is not set. Set it on every host (README: "
                "'Several hosts'), or pass --local-workers N to start N workers on this machine.")
        global _MULTI_WORKER  # One per process: a second one's collectives do not connect.
        if _MULTI_WORKER is None:
            _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
        return _MULTI_WORKER
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)


def cpu_has_amx_bf16() -> bool:
    """True on CPUs with AMX-bf16 (elsewhere bf16 is emulated and slower than float32)."""
    return platform_info.has_fast_bf16()


def resolve_precision(name: str) -> str:
    """`auto`: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with AMX-bf16, else float32."""
    if name != "auto":
        return name
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_amx_bf16() else "float32"
