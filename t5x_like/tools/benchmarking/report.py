"""Pure arithmetic of a benchmark (step-time statistics, throughput, MFU, memory fit) and the
text table it prints. No JAX here: everything is a function of numbers already measured."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

GIB = 1024**3


def step_time_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Median, min, p90 and mean of per-step wall times (seconds)."""
    if not len(seconds):
        raise ValueError("No step times: run at least one timed step (--steps >= 1).")
    times = np.asarray(seconds, np.float64)
    return {
        "median_s": float(np.median(times)),
        "min_s": float(times.min()),
        "p90_s": float(np.percentile(times, 90)),
        "mean_s": float(times.mean()),
    }


def throughput(
    step_seconds: float, tokens_per_step: int, flops_per_token: float, peak_flops: float
) -> dict[str, float]:
    """Tokens/s, achieved model FLOP/s and MFU (model FLOPs utilisation) of one step time.

    MFU = tokens/s * model FLOPs per token / peak FLOP/s of all the run's devices.
    """
    if step_seconds <= 0:
        raise ValueError(f"step time {step_seconds} must be > 0.")
    tokens_per_sec = tokens_per_step / step_seconds
    model_flops_per_sec = tokens_per_sec * flops_per_token
    mfu = model_flops_per_sec / peak_flops if peak_flops > 0 else math.nan
    return {
        "tokens_per_sec": tokens_per_sec,
        "model_flops_per_sec": model_flops_per_sec,
        "mfu": mfu,
    }


def memory_estimate(analysis: dict[str, int]) -> int:
    """Peak bytes per device of a compiled program from its memory analysis: arguments +
    outputs - donated (aliased) outputs + temporaries + generated code."""
    return (
        analysis["argument_bytes"]
        + analysis["output_bytes"]
        - analysis["alias_bytes"]
        + analysis["temp_bytes"]
        + analysis["generated_code_bytes"]
    )


def fits(bytes_per_device: int, budget_gib: float) -> str:
    """ "FITS" or "DOES NOT FIT" in a per-device memory budget of `budget_gib` GiB."""
    return "FITS" if bytes_per_device <= budget_gib * GIB else "DOES NOT FIT"


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def gib(nbytes: float) -> str:
    """Bytes as GiB (MiB below 1 GiB, so small models do not print 0.000)."""
    if nbytes < GIB:
        return f"{nbytes / 1024**2:.2f} MiB"
    return f"{nbytes / GIB:.3f} GiB"


def table(rows: Sequence[tuple[str, Any]], title: str = "") -> str:
    """Two aligned columns (name, value); a row with value None is a section heading."""
    width = max((len(name) for name, _ in rows), default=0)
    lines = [title, "=" * max(len(title), 20)] if title else []
    for name, value in rows:
        if value is None:
            lines.append(f"-- {name}")
        else:
            lines.append(f"{name.ljust(width)}  {_format(value)}")
    return "\n".join(lines)
