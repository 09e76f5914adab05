"""Position-wise feed-forward block: plain (relu/gelu/silu) or gated (swiglu/geglu/reglu)."""

import functools

import flax.linen as nn
import jax

from t5x_like.layers.config import GATED_ACTIVATIONS, TransformerConfig
from t5x_like.layers.linear import dense

_ACTIVATION_FNS = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,  # The tanh approximation (GPT-2's gelu_new).
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),  # The erf GELU (BERT).
    "silu": jax.nn.silu,
    "swiglu": jax.nn.silu,
    "geglu": jax.nn.gelu,
    "reglu": jax.nn.relu,
}


class Mlp(nn.Module):
    """d_model -> mlp_dim -> d_model, with the gate as a second input projection when gated."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        act = _ACTIVATION_FNS[cfg.activation]
        if cfg.activation in GATED_ACTIVATIONS:
            h = act(dense(cfg, cfg.mlp_dim, ("embed", "mlp"), "wi_0")(x))
            h = h * dense(cfg, cfg.mlp_dim, ("embed", "mlp"), "wi_1")(x)
        else:
            h = act(dense(cfg, cfg.mlp_dim, ("embed", "mlp"), "wi")(x))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
        y = dense(cfg, cfg.d_model, ("mlp", "embed"), "wo")(h)
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))
