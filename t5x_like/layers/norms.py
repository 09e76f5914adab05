"""Normalisation layers (LayerNorm, RMSNorm) with a logically named scale."""

import flax.linen as nn

from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.initializers import logical_init


def make_norm(config: TransformerConfig, name: str) -> nn.Module:
    """Returns the configured norm over the `embed` axis; statistics are computed in float32."""
    scale_init = logical_init(nn.initializers.ones, ("embed",))
    common = dict(
        epsilon=config.norm_eps,
        dtype=config.compute_dtype,
        param_dtype=config.weight_dtype,
        scale_init=scale_init,
        name=name,
    )
    if config.norm == "rmsnorm":
        return nn.RMSNorm(**common)
    if config.norm == "layernorm":
        bias_init = logical_init(nn.initializers.zeros, ("embed",))
        return nn.LayerNorm(use_bias=True, bias_init=bias_init, **common)
    raise ValueError(f"Unknown norm {config.norm!r}; expected 'rmsnorm' or 'layernorm'.")
