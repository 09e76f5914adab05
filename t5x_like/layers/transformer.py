"""The one Transformer stack both model families are assembled from.

A pre-norm residual layer (self-attention, optional cross-attention, MLP) repeated `num_layers`
times plus a final norm. The decoder-only model uses it causally without cross-attention; the T5
encoder uses it bidirectionally, and the T5 decoder causally with cross-attention.

With `scan_layers`, the layers are one `nn.scan` over a stacked copy of the layer parameters
(leading logical axis "layers"); `remat` wraps each layer in `nn.remat` with a policy.
"""

import flax.linen as nn
import jax

from t5x_like.layers.attention import Attention
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.mlp import Mlp
from t5x_like.layers.norms import make_norm


class TransformerLayer(nn.Module):
    """x + Attn(Norm(x)) [+ CrossAttn(Norm(x))] + Mlp(Norm(x)), each branch with dropout."""

    config: TransformerConfig
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        deterministic: bool,
        encoded: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        use_rope = cfg.position == "rope"

        h = make_norm(cfg, "pre_attention_norm")(x)
        h = Attention(cfg, use_rope=use_rope, name="self_attention")(
            h, h, mask, positions, positions
        )
        x = x + dropout(h, deterministic=deterministic)

        if self.cross_attention:
            h = make_norm(cfg, "pre_cross_attention_norm")(x)
            h = Attention(cfg, name="cross_attention")(h, encoded, cross_mask)
            x = x + dropout(h, deterministic=deterministic)

        h = make_norm(cfg, "pre_mlp_norm")(x)
        h = Mlp(cfg, name="mlp")(h, deterministic)
        x = x + dropout(h, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        # nn.scan wants (carry, per-layer output).
        return (x, None) if cfg.scan_layers else x


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# Position of `deterministic` in TransformerLayer.__call__, counting self (flax's convention).
_DETERMINISTIC_ARGNUM = 4


class TransformerStack(nn.Module):
    """`num_layers` TransformerLayers followed by the final norm."""

    config: TransformerConfig
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        positions: jax.Array,
        deterministic: bool,
        encoded: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        layer_cls = TransformerLayer
        if cfg.remat != "none":
            layer_cls = nn.remat(
                layer_cls,
                policy=_REMAT_POLICIES[cfg.remat],
                # Inside scan the loop boundary already prevents CSE across layers.
                prevent_cse=not cfg.scan_layers,
                static_argnums=(_DETERMINISTIC_ARGNUM,),
            )
        args = (mask, positions, deterministic, encoded, cross_mask)
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * len(args),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(cfg, self.cross_attention, name="layers")(x, *args)
        else:
            for i in range(cfg.num_layers):
                x = layer_cls(cfg, self.cross_attention, name=f"layers_{i}")(x, *args)
        return make_norm(cfg, "final_norm")(x)
