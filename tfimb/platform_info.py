"""The CPU tfimb runs on, and TensorFlow's oneDNN kernels: on by default, stated with every figure.

TensorFlow's x86 wheels carry two sets of CPU kernels, Eigen's and oneDNN's. TensorFlow turns
oneDNN on by default only on CPUs with AVX-512 VNNI / BF16 or AMX; on every other x86 CPU
(AVX2-only machines such as AMD EPYC without AVX-512) it runs the Eigen kernels, and a ResNet
training step there takes about twice as long (benchmarks/NOTES.md). The switch,
`TF_ENABLE_ONEDNN_OPTS`, is read once, when TensorFlow is imported, so `import tfimb` sets it to
1 before that happens, unless the user set it (their value is kept, `0` included).

When TensorFlow was imported before tfimb with oneDNN off on a CPU that would gain from it,
`enable_onednn` warns once: it is too late to change, and nothing else would tell the user.

This module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# The flags that decide the CPU kernels and bf16 speed, printed with every benchmark figure.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
# TensorFlow enables oneDNN by itself on CPUs with any of these (tensorflow/core/util/util.cc).
_TF_DEFAULT_ON_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
                        "amx_int8")

_warned = False


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_fast_bf16() -> bool:
    """True on CPUs with AMX-bf16 (bf16 matrix units); elsewhere bf16 is emulated and slower."""
    return "amx_bf16" in cpu_flags()


def onednn_benefits() -> bool:
    """True on an x86-64 CPU where TensorFlow would leave oneDNN off by itself."""
    flags = cpu_flags()
    is_x86 = platform.machine().lower() in ("x86_64", "amd64")
    return is_x86 and "avx2" in flags and not any(f in flags for f in _TF_DEFAULT_ON_FLAGS)


def onednn_enabled() -> bool | None:
    """Whether TensorFlow runs its oneDNN kernels in this process (None before it is imported)."""
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # A TensorFlow without the probe: fall back on the variable.
        return os.environ.get(ONEDNN_VARIABLE, "") in ("1", "true", "True")
    return bool(_pywrap_util_port.IsMklEnabled())


def enable_onednn() -> None:
    """Ask for oneDNN before TensorFlow loads, unless the user chose; warn once when too late."""
    global _warned
    if ONEDNN_VARIABLE in os.environ:
        return  # The user's choice, 0 included.
    if "tensorflow" not in sys.modules:
        os.environ[ONEDNN_VARIABLE] = "1"
        return
    if not _warned and onednn_benefits() and onednn_enabled() is False:
        _warned = True
        warnings.warn(
            "tfimb: TensorFlow was imported before tfimb with its oneDNN kernels off, and on "
            f"this CPU ({cpu_model()}) training runs about 2x slower without them. Import "
            f"tfimb first, or set {ONEDNN_VARIABLE}=1 before TensorFlow is imported.",
            RuntimeWarning, stacklevel=3)


def describe() -> str:
    """One line for benchmark output: CPU model, logical CPUs, the flags that matter, oneDNN."""
    flags = cpu_flags()
    shown = " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    state = onednn_enabled()
    onednn = {True: "on", False: "off", None: "TensorFlow not loaded"}[state]
    setting = os.environ.get(ONEDNN_VARIABLE, "unset")
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, {shown}; oneDNN {onednn} "
            f"({ONEDNN_VARIABLE}={setting})")


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.readlines()
    except OSError:
        return []
