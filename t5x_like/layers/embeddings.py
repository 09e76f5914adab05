"""Token embeddings and position encodings: sinusoidal, learned, rotary (RoPE), T5 relative."""

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
        if self.config.scale_embeddings:  # Gemma: the lookup times sqrt(d_model).
            x = x * jnp.asarray(self.config.d_model**0.5, x.dtype)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def attend_inputs(self, x: jax.Array) -> jax.Array:
        """x scaled by 1/sqrt(d_model) (unless `scale_tied_logits` is off, as in GPT-2), so that
        `attend`'s logits x @ table^T are O(1).

        Scaling the [B, T, d] input rather than the [B, T, vocab] logits is the same product up
        to float rounding, and keeps a vocab-sized multiply (and its gradient) out of the step.
        """
        if not self.config.scale_tied_logits:
            return x
        return x * jnp.asarray(self.config.d_model**-0.5, x.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits against the embedding table (tied LM head), from `attend_inputs(x)`."""
        table = jnp.asarray(self.embedding, self.config.compute_dtype)
        logits = jnp.einsum("bld,vd->blv", self.attend_inputs(x), table)
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


def add_absolute_positions(
    config: TransformerConfig,
    x: jax.Array,
    positions: jax.Array,
    learned: LearnedPositions | None = None,
) -> jax.Array:
    """x plus the configured absolute position encoding: the `learned` table or sinusoids.

    RoPE and relative positions act inside attention instead, so they leave x unchanged.
    """
    if config.position == "learned":
        return x + learned(positions)
    if config.position == "sinusoidal":
        return x + sinusoidal_positions(positions, config.d_model).astype(x.dtype)
    return x


def rope_inv_freq(
    head_dim: int, theta: float, scaling: tuple[float, float, float, int] | None = None
) -> np.ndarray:
    """RoPE's inverse frequencies [head_dim // 2] (float32), with Llama 3's scaling when
    `scaling` = (factor, low_freq_factor, high_freq_factor, original_max_len): wavelengths
    longer than original_max_len / low_freq_factor are stretched by the factor, those shorter
    than original_max_len / high_freq_factor kept, those between blended smoothly (HF's
    `_compute_llama3_parameters`, step for step)."""
    half = head_dim // 2
    inv_freq = (1.0 / (theta ** (np.arange(half, dtype=np.float32) / half))).astype(np.float32)
    if scaling is None:
        return inv_freq
    factor, low, high, original = scaling
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(
    x: jax.Array,
    positions: jax.Array,
    theta: float,
    scaling: tuple[float, float, float, int] | None = None,
) -> jax.Array:
    """Rotary position embedding of x [B, L, H, D] at integer positions [B, L].

    Uses the half-split layout (rotate the first half of D against the second), as LLaMA-family
    checkpoints in the Hugging Face layout do; `scaling` is Llama 3's (see `rope_inv_freq`).
    Computed in float32 for accuracy.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}.")
    half = head_dim // 2
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, L, half]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def relative_position_bucket(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucket of each relative position (key position - query position).

    Half of the buckets (per direction when bidirectional) hold exact distances 0..max_exact-1;
    the others cover distances up to `max_distance` on a log scale, and farther ones share the
    last bucket. Causal attention only sees non-positive offsets, so all buckets go to the past.
    """
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    # Clamped to 1 inside the log only to avoid log(0); those entries take the exact branch.
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / np.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """T5's learned per-head bias for each relative-position bucket, shared by a stack's layers.

    Computed from the tokens' positions (restarting at 0 in each packed segment), so a packed
    row gets the same biases within each segment as the segment would alone.
    """

    config: TransformerConfig
    bidirectional: bool

    @nn.compact
    def __call__(self, q_positions: jax.Array, kv_positions: jax.Array) -> jax.Array:
        """Bias [B, heads, Tq, Tk] for positions q [B, Tq] and kv [B, Tk]."""
        cfg = self.config
        table = self.param(
            "rel_embedding",
            logical_init(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("relpos_buckets", "heads"),
            ),
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            cfg.weight_dtype,
        )
        relative = kv_positions[:, None, :] - q_positions[:, :, None]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
        )
        bias = jnp.take(jnp.asarray(table, cfg.compute_dtype), buckets, axis=0)  # [B, Tq, Tk, H]
        bias = jnp.transpose(bias, (0, 3, 1, 2))
        return nn.with_logical_constraint(bias, ("batch", "heads", "length", "kv_length"))
