"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), causal and packing masks.

The same module serves self-attention (decoder-only and T5 encoder/decoder) and cross-attention
(T5 decoder over encoder outputs). The softmax itself is `jax.nn.dot_product_attention`, which
picks XLA's or cuDNN's kernel; we only build projections, RoPE and masks around it.
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


class Attention(nn.Module):
    """Projections, optional RoPE, dot-product attention and the output projection."""

    config: TransformerConfig
    use_rope: bool = False

    def _project(self, x: jax.Array, heads: int, head_axis: str, name: str) -> jax.Array:
        cfg = self.config
        return dense(cfg, (heads, cfg.qkv_dim), ("embed", head_axis, "kv"), name)(x)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        kv_input: jax.Array,
        mask: jax.Array,
        q_positions: jax.Array | None = None,
        kv_positions: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        q = self._project(x, cfg.num_heads, "heads", "query")
        k = self._project(kv_input, cfg.kv_heads, "kv_heads", "key")
        v = self._project(kv_input, cfg.kv_heads, "kv_heads", "value")
        if self.use_rope:
            q = apply_rope(q, q_positions, cfg.rope_theta)
            k = apply_rope(k, kv_positions, cfg.rope_theta)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "kv"))
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        y = dense(cfg, cfg.d_model, ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))
