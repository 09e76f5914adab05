"""The one Transformer stack both model families are assembled from.

A residual layer (self-attention, optional cross-attention, MLP; pre- or post-norm) repeated
`num_layers` times, plus a final norm when pre-norm. The decoder-only model uses it causally
without cross-attention; the T5 encoder uses it bidirectionally, and the T5 decoder causally with
cross-attention.

With `scan_layers`, the layers are one `nn.scan` over a stacked copy of the layer parameters
(leading logical axis "layers"); `remat` wraps each layer in `nn.remat` with a policy.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.layers.attention import QKV_PROJ_NAMES, Attention, sliding_window_mask
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import RelativePositionBias
from t5x_like.layers.mlp import Mlp
from t5x_like.layers.norms import make_norm


class TransformerLayer(nn.Module):
    """Self-attention, optional cross-attention and MLP, each a residual branch with dropout.

    Pre-norm: x + Branch(Norm(x)); with `post_branch_norm`, x + OutNorm(Branch(Norm(x)))
    (Gemma 2 / 3). Post-norm: Norm(x + Branch(x)). With `decode`, the attention keys and values
    come from (and go to) the "cache" collection.

    A sliding-window (`local`) layer among global ones: unrolled, `local` says which it is and
    `mask` is already its own; scanned, the traced `is_local` picks between `mask` and
    `local_mask` (and the RoPE base, see `Attention`), so one scanned body serves both kinds.
    """

    config: TransformerConfig
    cross_attention: bool = False
    decode: bool = False
    causal: bool = True  # Self-attention masks future tokens (decoders).
    local: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        deterministic: bool,
        encoded: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
        attention_bias: jax.Array | None = None,
        local_mask: jax.Array | None = None,
        is_local: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        local = self.local
        if is_local is not None:
            mask, local = jnp.where(is_local, local_mask, mask), is_local
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        pre_norm = cfg.norm_position == "pre"

        def residual(x: jax.Array, branch, name: str) -> jax.Array:
            norm = make_norm(cfg, f"{'pre' if pre_norm else 'post'}_{name}_norm")
            h = branch(norm(x) if pre_norm else x)
            if pre_norm and cfg.post_branch_norm:
                h = make_norm(cfg, f"{name}_output_norm")(h)
            x = x + dropout(h, deterministic=deterministic)
            return x if pre_norm else norm(x)

        self_attention = Attention(
            cfg,
            use_rope=cfg.position == "rope",
            decode=self.decode,
            causal=self.causal,
            name="self_attention",
        )
        x = residual(
            x,
            lambda h: self_attention(
                h, h, mask, positions, positions, bias=attention_bias, local=local
            ),
            "attention",
        )
        if self.cross_attention:
            attention = Attention(cfg, decode=self.decode, is_cross=True, name="cross_attention")
            x = residual(x, lambda h: attention(h, encoded, cross_mask), "cross_attention")
        mlp = Mlp(cfg, name="mlp")
        x = residual(x, lambda h: mlp(h, deterministic), "mlp")
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        # nn.scan wants (carry, per-layer output).
        return (x, None) if cfg.scan_layers else x


_POLICIES = jax.checkpoint_policies
_REMAT_POLICIES = {
    "full": _POLICIES.nothing_saveable,
    "nothing_saveable": _POLICIES.nothing_saveable,
    "dots": _POLICIES.dots_with_no_batch_dims_saveable,
    "dots_with_no_batch_dims_saveable": _POLICIES.dots_with_no_batch_dims_saveable,
    "dots_saveable": _POLICIES.dots_saveable,
    "everything_saveable": _POLICIES.everything_saveable,
    "save_qkv_proj": _POLICIES.save_only_these_names(*QKV_PROJ_NAMES),
}
# Position of `deterministic` in TransformerLayer.__call__, counting self (flax's convention).
_DETERMINISTIC_ARGNUM = 4


class TransformerStack(nn.Module):
    """`num_layers` TransformerLayers followed by the final norm (pre-norm only).

    With relative positions the stack owns one RelativePositionBias that all its layers share
    (as in T5): bidirectional unless `causal`. `decode` makes the layers' attention read and
    write the KV cache (see `Attention`).
    """

    config: TransformerConfig
    cross_attention: bool = False
    causal: bool = True
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        deterministic: bool,
        encoded: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
        kv_positions: jax.Array | None = None,
    ) -> jax.Array:
        """`kv_positions`: positions of the keys when they differ from the queries' (the cached
        tokens while decoding); only relative position biases need them."""
        cfg = self.config
        layer_cls = TransformerLayer
        # Decoding computes no gradients: nothing to rematerialise.
        if cfg.remat != "none" and not self.decode:
            layer_cls = nn.remat(
                layer_cls,
                policy=_REMAT_POLICIES[cfg.remat],
                # Inside scan the loop boundary already prevents CSE across layers.
                prevent_cse=not cfg.scan_layers,
                static_argnums=(_DETERMINISTIC_ARGNUM,),
            )
        bias = None
        if cfg.position == "relative":
            bias = RelativePositionBias(cfg, bidirectional=not self.causal, name="relpos_bias")(
                positions, positions if kv_positions is None else kv_positions
            )
        local_mask = mask
        if cfg.sliding_window is not None:
            local_mask = mask & sliding_window_mask(
                positions, positions if kv_positions is None else kv_positions, cfg.sliding_window
            )
        args = (positions, deterministic, encoded, cross_mask, bias)
        if cfg.scan_layers:
            in_axes = (nn.broadcast,) * (len(args) + 1)
            if cfg.mixed_layers:  # Both masks, and each layer's kind as a scanned input.
                kinds = [cfg.is_local_layer(i) for i in range(cfg.num_layers)]
                args += (local_mask, jnp.asarray(kinds))
                in_axes += (nn.broadcast, 0)
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=in_axes,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            # Without mixed kinds every layer is layer 0's kind.
            local = cfg.is_local_layer(0) and not cfg.mixed_layers
            layers = scanned(
                cfg, self.cross_attention, self.decode, self.causal, local, name="layers"
            )
            x, _ = layers(x, local_mask if local else mask, *args)
        else:
            for i in range(cfg.num_layers):
                local = cfg.is_local_layer(i)
                layer = layer_cls(
                    cfg, self.cross_attention, self.decode, self.causal, local, name=f"layers_{i}"
                )
                x = layer(x, local_mask if local else mask, *args)
        if cfg.norm_position == "post":  # Each layer already ends in a norm.
            return x
        return make_norm(cfg, "final_norm")(x)
