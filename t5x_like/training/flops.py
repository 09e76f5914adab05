"""Parameter counts and device peak FLOP/s, for the MFU estimates (training log, benchmark).

The model FLOPs per token are each model family's formula (PaLM appendix B: 6 * matmul params
+ the attention scores and values; `models.ModelFamily.train_flops_per_token`).

Peaks: dense (not 2:4-sparse) datasheet figures per chip. GPUs run float32 matmuls as TF32 at
JAX's default precision, so float32 models get the TF32 tensor-core peak there; TPUs run float32
matmuls at default precision as bf16 passes, so they keep the bf16 peak. CPUs have no table: the
peak is measured with a jitted matmul of the model's dtype and a representative shape, once per
machine, dtype and shape, and cached (`cpu_peak_cache_file`): re-measured at each start on a
shared machine it ranged over 6x, and the MFU with it. A config can give the peak instead
(train.peak_flops). An MFU above 100% is a wrong peak, not a result (`mfu_metrics`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

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


# Where measured CPU peaks are kept; $T5X_LIKE_CACHE_DIR replaces ~/.cache/t5x_like.
CACHE_DIR_ENV = "T5X_LIKE_CACHE_DIR"
# The best of the matmuls run for this long is the measured peak (longer: steadier).
_CPU_MEASURE_SECONDS = 2.0


def cpu_peak_cache_file() -> str:
    """The JSON file of measured CPU peaks: $T5X_LIKE_CACHE_DIR/peak_flops.json, by default
    ~/.cache/t5x_like/peak_flops.json."""
    directory = os.environ.get(CACHE_DIR_ENV) or os.path.join("~", ".cache", "t5x_like")
    return os.path.join(os.path.expanduser(directory), "peak_flops.json")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """This machine as the cache names it: host name, CPU model and the cores this process
    may use (a different core allowance is a different peak)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.node()} | {_cpu_model()} | {cores} cores"


def _read_cache(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):
        return {}  # None yet, or unreadable: measured again and rewritten.


def cached_cpu_peak(dtype: str, shape: tuple[int, int, int], path: str) -> tuple[float, str]:
    """(peak FLOP/s, its source) for this machine, `dtype` and matmul `shape`: from the cache
    file at `path`, else measured now (`measured_cpu_peak`) and added to it."""
    dims = "x".join(map(str, shape))
    key = f"{machine_key()} | {dtype} | {dims}"
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and _positive_number(entry.get("flops")):
        when = entry.get("measured", "earlier")
        return float(entry["flops"]), (
            f"{dtype} {dims} matmul measured on this CPU {when}, cached in {path}; "
            "delete the file to re-measure"
        )
    peak = measured_cpu_peak(dtype, shape, min_seconds=_CPU_MEASURE_SECONDS)
    entries = _read_cache(path)
    entries[key] = {"flops": peak, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=2, sort_keys=True)
        os.replace(tmp, path)  # Atomic: a concurrent reader sees the old or the new file.
        where = f"cached in {path}"
    except OSError as e:
        where = f"not cached ({e})"
    return peak, f"{dtype} {dims} matmul measured on this CPU now, {where}"


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def peak_flops(
    dtype: str = "float32",
    matmul_shape: tuple[int, int, int] | None = None,
    *,
    given: float | None = None,
    cache_file: str | None = None,
    use_cache: bool = True,
) -> tuple[float, str]:
    """(total peak FLOP/s of this run's devices, where the figure comes from).

    `given` (train.peak_flops) wins. Accelerators use the datasheet table (per chip, times the
    device count). On CPU the peak is a `matmul_shape` (m, k, n) matmul (default 1024^3),
    measured once per machine, dtype and shape and cached in `cache_file` (default
    `cpu_peak_cache_file()`), or measured afresh without `use_cache`: all fake CPU devices
    share the same cores, so the one-device figure is the total.
    """
    if given is not None:
        return float(given), "given by train.peak_flops"
    devices = jax.devices()
    if devices[0].platform == "cpu":
        shape = tuple(matmul_shape or (1024, 1024, 1024))
        name = jnp.dtype(dtype).name
        if use_cache:
            return cached_cpu_peak(name, shape, cache_file or cpu_peak_cache_file())
        peak = measured_cpu_peak(name, shape)
        dims = "x".join(map(str, shape))
        return peak, f"measured {name} {dims} (m x k x n) matmul on CPU"
    found = datasheet_peak(devices[0].device_kind, dtype)
    if found is None:
        return math.nan, f"unknown device kind {devices[0].device_kind!r}"
    return found[0] * len(devices), found[1]


_WARNED_PEAKS: set[float] = set()


def mfu_metrics(tokens_per_sec: float, flops_per_token: float, peak: float) -> dict[str, float]:
    """The achieved model FLOP/s and the MFU against `peak`, as logged and written.

    An MFU above 100% means the peak is wrong (measured while the machine was busy, or the
    device's figure is not what it runs at): it is written as `mfu_invalid`, never as `mfu`,
    and logged as a warning naming the way out.
    """
    achieved = tokens_per_sec * flops_per_token
    mfu = achieved / peak if _positive_number(peak) else math.nan
    if not mfu > 1.0:
        return {"model_flops_per_sec": achieved, "mfu": mfu}
    if peak in _WARNED_PEAKS:
        return {"model_flops_per_sec": achieved, "mfu_invalid": mfu}
    _WARNED_PEAKS.add(peak)  # Once per peak: the log lines then say "MFU invalid".
    logging.warning(
        "MFU %.3f is above 1 (100%%): a measurement problem, not a result, logged as "
        "mfu_invalid. The peak (%.3g FLOP/s) is below what this run achieves (%.3g FLOP/s); "
        "set train.peak_flops, or delete %s to re-measure the CPU peak on an idle machine.",
        mfu,
        peak,
        achieved,
        cpu_peak_cache_file(),
    )
    return {"model_flops_per_sec": achieved, "mfu_invalid": mfu}
