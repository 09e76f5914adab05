"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), causal and packing masks.

The same module serves self-attention (decoder-only and T5 encoder/decoder) and cross-attention
(T5 decoder over encoder outputs). The softmax itself is `jax.nn.dot_product_attention`, which
picks XLA's or cuDNN's kernel; we only build projections, RoPE, masks and biases (T5's relative
position bias) around it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import apply_rope
from t5x_like.layers.linear import dense


def make_attention_mask(
    q_segment_ids: jax.Array, kv_segment_ids: jax.Array, causal: bool
) -> jax.Array:
    """Boolean mask [B, 1, Tq, Tk]: same (non-padding) segment, and no future tokens if causal.

    Segment ids are 1..k for the documents packed into a row and 0 for padding, so a token never
    attends across documents or to padding. Causality is by index within the row, which equals
    position order within each segment.
    """
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    mask = same & (kv_segment_ids[:, None, :] > 0)
    if causal:
        tq, tk = q_segment_ids.shape[1], kv_segment_ids.shape[1]
        mask = mask & (jnp.arange(tq)[:, None] >= jnp.arange(tk)[None, :])[None]
    return mask[:, None, :, :]


def default_segments_and_positions(
    tokens: jax.Array, segment_ids: jax.Array | None, positions: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """An unpacked row's segment ids (all 1) and positions (0..L-1) where none are given."""
    if segment_ids is None:
        segment_ids = jnp.ones_like(tokens)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return segment_ids, positions


class Attention(nn.Module):
    """Projections, optional RoPE, dot-product attention and the output projection."""

    config: TransformerConfig
    use_rope: bool = False

    def _project(
        self, x: jax.Array, heads: int, head_axis: str, name: str, init_scale: float = 1.0
    ) -> jax.Array:
        cfg = self.config
        features, axes = (heads, cfg.qkv_dim), ("embed", head_axis, "kv")
        return dense(cfg, features, axes, name, init_scale=init_scale)(x)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        kv_input: jax.Array,
        mask: jax.Array,
        q_positions: jax.Array | None = None,
        kv_positions: jax.Array | None = None,
        bias: jax.Array | None = None,
    ) -> jax.Array:
        """Attends from x [B, Tq, E] to kv_input [B, Tk, E]; `bias` [B|1, H, Tq, Tk] is added to
        the logits before the softmax."""
        cfg = self.config
        # Unscaled logits (T5): the 1/sqrt(head_dim) goes into the query init, as in T5X.
        query_scale = 1.0 if cfg.scale_attention_logits else 1.0 / cfg.qkv_dim
        q = self._project(x, cfg.num_heads, "heads", "query", init_scale=query_scale)
        k = self._project(kv_input, cfg.kv_heads, "kv_heads", "key")
        v = self._project(kv_input, cfg.kv_heads, "kv_heads", "value")
        if self.use_rope:
            q = apply_rope(q, q_positions, cfg.rope_theta)
            k = apply_rope(k, kv_positions, cfg.rope_theta)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "kv"))
        scale = None if cfg.scale_attention_logits else 1.0
        if bias is not None:
            bias = bias.astype(q.dtype)
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        y = dense(cfg, cfg.d_model, ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))
