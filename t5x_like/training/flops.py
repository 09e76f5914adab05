"""Parameter counts and device peak FLOP/s, for the MFU estimates (training log, benchmark).

The model FLOPs per token are each model family's formula (PaLM appendix B: 6 * matmul params
+ the attention scores and values; `models.ModelFamily.train_flops_per_token`).

Peaks: dense (not 2:4-sparse) datasheet figures per chip. GPUs run float32 matmuls as TF32 at
JAX's default precision, so float32 models get the TF32 tensor-core peak there; TPUs run float32
matmuls at default precision as bf16 passes, so they keep the bf16 peak. CPUs have no table: the
peak is measured with a jitted matmul of the model's dtype and a representative shape.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp

# Dense peak FLOP/s per chip: (bf16/fp16, float32 at default matmul precision). More specific
# device-kind prefixes come first (matched with str.startswith, in order).
PEAK_FLOPS = {
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),
    "TPU v5e": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12),
    "TPU v5": (459e12, 459e12),
    "TPU v6 lite": (918e12, 918e12),
    "TPU v6e": (918e12, 918e12),
    "NVIDIA H100 PCIe": (756e12, 378e12),
    "NVIDIA H100 NVL": (835e12, 418e12),
    "NVIDIA H100": (989e12, 495e12),  # SXM: 989.4 TFLOP/s bf16, 494.7 TF32 (dense).
    "NVIDIA H200": (989e12, 495e12),  # Same compute as H100 SXM, more/faster HBM.
    "NVIDIA GH200": (989e12, 495e12),
    "NVIDIA A100": (312e12, 156e12),
    "NVIDIA B200": (2250e12, 1100e12),
}


def param_count(params: Any) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def datasheet_peak(device_kind: str, dtype: str) -> tuple[float, str] | None:
    """(peak FLOP/s of one chip for `dtype`, the table entry used), or None if not listed."""
    for name, (half, single) in PEAK_FLOPS.items():
        if device_kind.startswith(name):
            if jnp.dtype(dtype) == jnp.float32:
                precision = "bf16 passes" if name.startswith("TPU") else "tf32"
                return single, f"datasheet {name} float32 ({precision}, dense)"
            return half, f"datasheet {name} {jnp.dtype(dtype).name} (dense)"
    return None


def measured_cpu_peak(
    dtype: str, shape: tuple[int, int, int] = (1024, 1024, 1024), min_seconds: float = 0.5
) -> float:
    """FLOP/s of a jitted [m, k] @ [k, n] matmul in `dtype` on the first CPU device (XLA uses
    all host cores for it): the best of the runs made in `min_seconds` (at least 5) after a
    warm-up. The first runs of a process are often 2x slower (thread pools and caches still
    cold) and a shared machine slows some runs down: the best of many is the machine's peak."""
    m, k, n = shape
    device = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((m, k), dtype), device)
    b = jax.device_put(jnp.ones((k, n), dtype), device)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best, runs, began = math.inf, 0, time.perf_counter()
    while runs < 5 or time.perf_counter() - began < min_seconds:
        start = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
        runs += 1
    return 2 * m * k * n / best


def peak_flops(
    dtype: str = "float32", matmul_shape: tuple[int, int, int] | None = None
) -> tuple[float, str]:
    """(total peak FLOP/s of this run's devices, where the figure comes from).

    Accelerators use the datasheet table (per chip, times the device count). On CPU the peak is
    measured with a `matmul_shape` (m, k, n) matmul (default 1024^3): all fake CPU devices share
    the same cores, so the one-device figure is the total.
    """
    devices = jax.devices()
    if devices[0].platform == "cpu":
        shape = tuple(matmul_shape or (1024, 1024, 1024))
        peak = measured_cpu_peak(jnp.dtype(dtype).name, shape)
        dims = "x".join(map(str, shape))
        return peak, f"measured {jnp.dtype(dtype).name} {dims} (m x k x n) matmul on CPU"
    found = datasheet_peak(devices[0].device_kind, dtype)
    if found is None:
        return math.nan, f"unknown device kind {devices[0].device_kind!r}"
    return found[0] * len(devices), found[1]
