"""Token embeddings and position encodings: sinusoidal, learned and rotary (RoPE)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.initializers import logical_init


class Embed(nn.Module):
    """Token embedding table (vocab, embed); `attend` gives logits for a tied output layer."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding",
            logical_init(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model),
            cfg.weight_dtype,
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        table = jnp.asarray(self.embedding, self.config.compute_dtype)
        x = jnp.take(table, tokens, axis=0)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the embedding table, scaled by 1/sqrt(d_model) to keep them O(1)."""
        table = jnp.asarray(self.embedding, self.config.compute_dtype)
        logits = jnp.einsum("bld,vd->blv", x, table) * float(self.config.d_model**-0.5)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def sinusoidal_positions(positions: jax.Array, dim: int, max_timescale: float = 1e4) -> jax.Array:
    """Transformer sin/cos encodings for integer `positions` [..., L] -> [..., L, dim]."""
    half = dim // 2
    inv_freq = max_timescale ** (-np.arange(half, dtype=np.float32) / max(half - 1, 1))
    angles = positions[..., None].astype(jnp.float32) * inv_freq
    enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        enc = jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, 1)])
    return enc


class LearnedPositions(nn.Module):
    """A learned absolute position table (GPT-2 style)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        cfg = self.config
        table = self.param(
            "embedding",
            logical_init(nn.initializers.normal(stddev=0.02), ("abs_length", "embed")),
            (cfg.max_len, cfg.d_model),
            cfg.weight_dtype,
        )
        return jnp.take(jnp.asarray(table, cfg.compute_dtype), positions, axis=0)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding of x [B, L, H, D] at integer positions [B, L].

    Uses the half-split layout (rotate the first half of D against the second), as LLaMA-family
    checkpoints in the Hugging Face layout do. Computed in float32 for accuracy.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}.")
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(half, dtype=np.float32) / half))
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, L, half]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
