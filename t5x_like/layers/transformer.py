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

from t5x_like.layers.attention import Attention
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import RelativePositionBias
from t5x_like.layers.mlp import Mlp
from t5x_like.layers.norms import make_norm


class TransformerLayer(nn.Module):
    """Self-attention, optional cross-attention and MLP, each a residual branch with dropout.

    Pre-norm: x + Branch(Norm(x)). Post-norm: Norm(x + Branch(x)).
    """

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
        attention_bias: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        pre_norm = cfg.norm_position == "pre"

        def residual(x: jax.Array, branch, name: str) -> jax.Array:
            norm = make_norm(cfg, f"{'pre' if pre_norm else 'post'}_{name}_norm")
            h = branch(norm(x) if pre_norm else x)
            x = x + dropout(h, deterministic=deterministic)
            return x if pre_norm else norm(x)

        self_attention = Attention(cfg, use_rope=cfg.position == "rope", name="self_attention")
        x = residual(
            x,
            lambda h: self_attention(h, h, mask, positions, positions, bias=attention_bias),
            "attention",
        )
        if self.cross_attention:
            attention = Attention(cfg, name="cross_attention")
            x = residual(
                x, lambda h: attention(h, encoded, cross_mask), "cross_attention"
            )
        mlp = Mlp(cfg, name="mlp")
        x = residual(x, lambda h: mlp(h, deterministic), "mlp")
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
    """`num_layers` TransformerLayers followed by the final norm (pre-norm only).

    With relative positions the stack owns one RelativePositionBias that all its layers share
    (as in T5): bidirectional unless `causal`.
    """

    config: TransformerConfig
    cross_attention: bool = False
    causal: bool = True

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
        bias = None
        if cfg.position == "relative":
            bias = RelativePositionBias(cfg, bidirectional=not self.causal, name="relpos_bias")(
                positions, positions
            )
        args = (mask, positions, deterministic, encoded, cross_mask, bias)
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
        if cfg.norm_position == "post":  # Each layer already ends in a norm.
            return x
        return make_norm(cfg, "final_norm")(x)
