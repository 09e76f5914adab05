"""Model FLOPs per token and device peak FLOP/s, for the MFU estimate in the training log.

FLOPs per token (training, forward + backward) = 6 * N + 12 * L * T * d_attn, where N counts the
parameters used in matmuls (all but the token/position embedding lookups; a tied LM head counts
once, as a matmul), L the layers, T the sequence length and d_attn = heads * head_dim: the PaLM
appendix-B formula, attention scores and values counted over the full (not causal) square.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from t5x_like import partitioning
from t5x_like.layers.config import TransformerConfig

# Dense bf16 peak FLOP/s per chip, from vendor datasheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12,
}


def param_count(params: Any) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def matmul_params(params: Any, cfg: TransformerConfig) -> int:
    """Parameters taking part in matmuls: embedding tables count only if tied to the LM head."""
    total = param_count(params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        keys = partitioning.path_names(path)
        if "embedding" in keys[-1:] and ("position_embed" in keys or not cfg.tie_embeddings):
            total -= math.prod(leaf.shape)
    return total


def train_flops_per_token(params: Any, cfg: TransformerConfig, seq_len: int) -> float:
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.qkv_dim
    return 6.0 * matmul_params(params, cfg) + attention


@functools.cache
def _measured_cpu_peak(dtype: str) -> float:
    """FLOP/s of a large jitted matmul on the first CPU device (all host cores)."""
    n = 1024
    device = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(dtype: str = "float32") -> tuple[float, str]:
    """(total peak FLOP/s of this run's devices, where the figure comes from).

    Accelerators use the datasheet table (per chip, times the device count). On CPU the peak is
    measured: all fake CPU devices share the same cores, so the one-device figure is the total.
    """
    devices = jax.devices()
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        return _measured_cpu_peak(dtype), f"measured {dtype} matmul on CPU"
    for name, flops in PEAK_FLOPS.items():
        if kind.startswith(name):
            return flops * len(devices), f"datasheet {name}"
    return math.nan, f"unknown device kind {kind!r}"
