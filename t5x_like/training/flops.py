"""Model FLOPs per token and device peak FLOP/s, for the MFU estimate in the training log.

FLOPs per token (training, forward + backward) = 6 * N + 12 * L * T * d_attn, where N counts the
parameters used in matmuls (all but the token/position embedding lookups; a tied LM head counts
once, as a matmul), L the layers, T the sequence length and d_attn = heads * head_dim: the PaLM
appendix-B formula, attention scores and values counted over the full (not causal) square.

Encoder-decoder models: per step 6 * (N_enc * T_enc + N_dec * T_dec) + 12 * d_attn * (L_enc *
T_enc^2 + L_dec * T_dec * (T_dec + T_enc)) per example, where N_dec includes the LM head and the
cross-attention; divided by T_enc + T_dec to give FLOPs per (encoder or decoder) token.
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
    """Parameters taking part in matmuls: the token embedding counts only if tied to the LM head;
    position tables and relative position biases (lookups) never count."""
    total = param_count(params)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        keys = partitioning.path_names(path)
        lookup = keys[-1] == "rel_embedding" or any(k.endswith("position_embed") for k in keys)
        if lookup or (keys[-1] == "embedding" and not cfg.tie_embeddings):
            total -= math.prod(leaf.shape)
    return total


def train_flops_per_token(params: Any, cfg: TransformerConfig, seq_len: int) -> float:
    """Decoder-only training FLOPs per token at sequence length `seq_len`."""
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.qkv_dim
    return 6.0 * matmul_params(params, cfg) + attention


def encoder_decoder_train_flops_per_token(
    params: Any, cfg: TransformerConfig, inputs_len: int, targets_len: int
) -> float:
    """Encoder-decoder training FLOPs per token, averaged over encoder and decoder tokens."""
    encoder = matmul_params(params.get("encoder", {}), cfg)
    decoder = matmul_params(params, cfg) - encoder  # Decoder stack and LM head.
    d_attn = cfg.num_heads * cfg.qkv_dim
    encoder_attention = cfg.num_layers * inputs_len**2
    decoder_attention = cfg.decoder_layers * targets_len * (targets_len + inputs_len)
    attention = 12 * d_attn * (encoder_attention + decoder_attention)
    per_example = 6.0 * (encoder * inputs_len + decoder * targets_len) + attention
    return per_example / (inputs_len + targets_len)


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
