"""Model assemblies: decoder-only and encoder-decoder Transformers built from layers/."""

from typing import Any

import flax.linen as nn

from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer

FAMILIES = ("decoder_only",)


def build_model(model_cfg: Any) -> nn.Module:
    """Builds the model module for the `model` section of an experiment config."""
    family = model_cfg.family
    if family == "decoder_only":
        return DecoderOnlyTransformer(TransformerConfig.from_config_dict(model_cfg))
    raise ValueError(f"Unknown model.family {family!r}; expected one of {FAMILIES}.")
