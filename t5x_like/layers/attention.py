"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), causal and packing masks.

The same module serves self-attention (decoder-only and T5 encoder/decoder) and cross-attention
(T5 decoder over encoder outputs): projections, RoPE, masks and biases (T5's relative position
bias) around the attention core, `xla_cpu.dot_product_attention` (the math of
`jax.nn.dot_product_attention`'s XLA path in a form XLA:CPU runs faster; see layers/xla_cpu.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from t5x_like.layers import xla_cpu
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import apply_rope
from t5x_like.layers.initializers import logical_init
from t5x_like.layers.linear import dense

# checkpoint_name tags of the Q/K/V projection outputs, for the "save_qkv_proj" remat policy.
QKV_PROJ_NAMES = ("query_proj", "key_proj", "value_proj")


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


def sliding_window_mask(q_positions: jax.Array, kv_positions: jax.Array, window: int) -> jax.Array:
    """Boolean mask [B, 1, Tq, Tk]: keys fewer than `window` positions from the query (Mistral's
    sliding window: a token sees itself and window - 1 earlier ones). By position, so packed
    documents and the decoding cache (whose slots carry their tokens' positions) get it too."""
    distance = q_positions[:, :, None] - kv_positions[:, None, :]
    return (jnp.abs(distance) < window)[:, None, :, :]


def default_segments_and_positions(
    tokens: jax.Array, segment_ids: jax.Array | None, positions: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """An unpacked row's segment ids (all 1) and positions (0..L-1) where none are given."""
    if segment_ids is None:
        segment_ids = jnp.ones_like(tokens)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return segment_ids, positions


# Keys and values in the decoding cache are heads-major, [B, KH, L, D]: the layout the attention
# dots over the cache read. Stored as [B, L, KH, D], XLA transposed the whole cache in every
# layer at every decoding step. The layout is internal (never checkpointed).
_CACHE_AXES = ("batch", "kv_heads", "length", "kv")


def _to_cache_layout(x: jax.Array) -> jax.Array:
    """[B, L, KH, D] -> the cache's [B, KH, L, D]."""
    return nn.with_logical_constraint(jnp.swapaxes(x, 1, 2), _CACHE_AXES)


def _from_cache_layout(x: jax.Array) -> jax.Array:
    """The cache's [B, KH, L, D] -> [B, L, KH, D] (a logical transpose: XLA reads the cache as
    it is stored)."""
    x = nn.with_logical_constraint(x, _CACHE_AXES)
    return jnp.swapaxes(x, 1, 2)


class DecodeState(nn.Module):
    """The decoding cache's bookkeeping: segment ids and positions of every cached token.

    Called once per model call in decode mode with the new tokens' segment ids and positions
    [B, T]. The first call (the one that creates the cache, with a dummy input as long as the
    cache) only allocates; later calls append at the cache index and return the mask of the new
    tokens over the whole cache [B, 1, T, L] (same non-padding segment, no later slot) and the
    positions of all cached tokens [B, L] (for relative position biases).
    """

    @nn.compact
    def __call__(self, segment_ids: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        initialized = self.has_variable("cache", "segment_ids")
        cached_segments = self.variable(
            "cache", "segment_ids", jnp.zeros, segment_ids.shape, jnp.int32
        )
        cached_positions = self.variable(
            "cache", "positions", jnp.zeros, positions.shape, jnp.int32
        )
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return make_attention_mask(segment_ids, segment_ids, causal=True), positions
        start = index.value
        cached_segments.value = lax.dynamic_update_slice(
            cached_segments.value, segment_ids.astype(jnp.int32), (0, start)
        )
        cached_positions.value = lax.dynamic_update_slice(
            cached_positions.value, positions.astype(jnp.int32), (0, start)
        )
        index.value = start + segment_ids.shape[1]
        kv_segments = cached_segments.value
        q_index = start + jnp.arange(segment_ids.shape[1])
        kv_index = jnp.arange(kv_segments.shape[1])
        mask = (segment_ids[:, :, None] == kv_segments[:, None, :]) & (kv_segments[:, None, :] > 0)
        mask = mask & (kv_index[None, :] <= q_index[:, None])[None]
        return mask[:, None, :, :], cached_positions.value


class Attention(nn.Module):
    """Projections, optional RoPE, dot-product attention and the output projection.

    With `decode`, keys and values live in the "cache" collection: self-attention appends the
    new tokens' keys/values at the cache index and attends over the whole cache; cross-attention
    projects the encoder outputs once, when the cache is created, and reuses them afterwards.
    """

    config: TransformerConfig
    use_rope: bool = False
    decode: bool = False
    is_cross: bool = False
    # The mask given is causal (besides segments): lets the core skip the masked quarter.
    causal: bool = False

    def _project(
        self, x: jax.Array, heads: int, head_axis: str, name: str, init_scale: float = 1.0
    ) -> jax.Array:
        cfg = self.config
        features, axes = (heads, cfg.qkv_dim), ("embed", head_axis, "kv")
        use_bias = cfg.use_bias or cfg.qkv_bias
        y = dense(cfg, features, axes, name, use_bias=use_bias, init_scale=init_scale)(x)
        return checkpoint_name(y, f"{name}_proj")  # Named for remat policies.

    def _head_norm(self, x: jax.Array, name: str) -> jax.Array:
        """With `qk_norm`, RMSNorm over each head's features (Qwen3's q_norm / k_norm)."""
        cfg = self.config
        if not cfg.qk_norm:
            return x
        return nn.RMSNorm(
            epsilon=cfg.norm_eps,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weight_dtype,
            scale_init=logical_init(nn.initializers.ones, ("kv",)),
            name=name,
        )(x)

    def _rope(self, x: jax.Array, positions: jax.Array, local: bool | jax.Array) -> jax.Array:
        """RoPE of the layer's kind: with `rope_local_theta`, sliding-window (`local`) layers
        rotate at that base and unscaled (Gemma 3); `local` is a traced flag in scanned layers."""
        cfg = self.config
        global_rope = lambda: apply_rope(x, positions, cfg.rope_theta, cfg.rope_scaling)  # noqa: E731
        if cfg.rope_local_theta is None or local is False:
            return global_rope()
        local_rope = apply_rope(x, positions, cfg.rope_local_theta)
        if local is True:
            return local_rope
        return jnp.where(local, local_rope, global_rope())

    def _keys_values(
        self,
        kv_input: jax.Array | None,
        kv_positions: jax.Array | None,
        local: bool | jax.Array = False,
    ) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        if self.decode and self.is_cross and self.has_variable("cache", "cached_key"):
            cache = self.variables["cache"]
            # The barrier keeps XLA from hoisting the layout change out of the decoding loop
            # (these keys/values never change in it): hoisted, it cancels the cache's own
            # transpose and the loop transposes the encoder keys/values back at every step.
            k, v = lax.optimization_barrier((cache["cached_key"], cache["cached_value"]))
            return _from_cache_layout(k), _from_cache_layout(v)
        k = self._project(kv_input, cfg.kv_heads, "kv_heads", "key")
        v = self._project(kv_input, cfg.kv_heads, "kv_heads", "value")
        k = self._head_norm(k, "key_norm")
        if self.use_rope:
            k = self._rope(k, kv_positions, local)
        k = nn.with_logical_constraint(k, ("batch", "length", "kv_heads", "kv"))
        v = nn.with_logical_constraint(v, ("batch", "length", "kv_heads", "kv"))
        if not self.decode:
            return k, v
        initialized = self.has_variable("cache", "cached_key")
        new_k, new_v = _to_cache_layout(k), _to_cache_layout(v)
        # Cross-attention caches the projected encoder outputs themselves; self-attention starts
        # empty (zeros that do not depend on k, so the cache-creating pass can be pruned).
        init_k = (lambda: new_k) if self.is_cross else (lambda: jnp.zeros_like(new_k))
        init_v = (lambda: new_v) if self.is_cross else (lambda: jnp.zeros_like(new_v))
        cached_k = self.variable("cache", "cached_key", init_k)
        cached_v = self.variable("cache", "cached_value", init_v)
        if self.is_cross:
            return k, v
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not initialized:
            return k, v
        start = (0, 0, index.value, 0)
        cached_k.value = lax.dynamic_update_slice(cached_k.value, new_k, start)
        cached_v.value = lax.dynamic_update_slice(cached_v.value, new_v, start)
        index.value = index.value + k.shape[1]
        return _from_cache_layout(cached_k.value), _from_cache_layout(cached_v.value)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        kv_input: jax.Array | None,
        mask: jax.Array,
        q_positions: jax.Array | None = None,
        kv_positions: jax.Array | None = None,
        bias: jax.Array | None = None,
        local: bool | jax.Array = False,
    ) -> jax.Array:
        """Attends from x [B, Tq, E] to kv_input [B, Tk, E] (or, decoding, to the cache);
        `bias` [B|1, H, Tq, Tk] is added to the logits before the softmax. `local`: this is a
        sliding-window layer (its RoPE base may differ; the window itself is in `mask`)."""
        cfg = self.config
        # Unscaled logits (T5): the 1/sqrt(head_dim) goes into the query init, as in T5X.
        query_scale = 1.0 if cfg.scale_attention_logits else 1.0 / cfg.qkv_dim
        q = self._project(x, cfg.num_heads, "heads", "query", init_scale=query_scale)
        q = self._head_norm(q, "query_norm")
        if self.use_rope:
            q = self._rope(q, q_positions, local)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k, v = self._keys_values(kv_input, kv_positions, local)
        scale = None if cfg.scale_attention_logits else 1.0
        if cfg.scale_attention_logits and cfg.query_pre_attn_scalar is not None:
            scale = cfg.query_pre_attn_scalar**-0.5  # Gemma 2 / 3.
        softcap = cfg.attn_logit_softcap
        if bias is not None:
            bias = bias.astype(q.dtype)
        causal = self.causal and not self.decode  # Decoding attends over the whole cache.
        # cuDNN's fused kernel has no logit soft-capping: capped models use the einsum core.
        if cfg.attention_impl == "cudnn" and not self.decode and softcap is None:
            # The segment mask becomes a cuDNN bias; is_causal lets the kernel skip the blocks
            # above the diagonal. Decoding steps (one query over the cache) stay on einsums.
            out = jax.nn.dot_product_attention(
                q,
                k,
                v,
                bias=bias,
                mask=mask,
                scale=scale,
                is_causal=causal,
                implementation="cudnn",
            )
        else:
            out = xla_cpu.dot_product_attention(
                q, k, v, mask, bias=bias, scale=scale, causal=causal, softcap=softcap
            )
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        y = dense(cfg, cfg.d_model, ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))
