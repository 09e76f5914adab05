"""Model assemblies: decoder-only and encoder-decoder Transformers built from layers/.

`build_model` makes the module for a config's `model` section; `forward` runs either family on a
batch in the data pipeline's format, so training, evaluation and decoding need not know which
family they hold.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer
from t5x_like.models.encoder_decoder import EncoderDecoderTransformer

FAMILIES = ("decoder_only", "encoder_decoder")
_MODELS = {"decoder_only": DecoderOnlyTransformer, "encoder_decoder": EncoderDecoderTransformer}


def build_model(model_cfg: Any) -> nn.Module:
    """Builds the model module for the `model` section of an experiment config."""
    family = model_cfg.family
    if family not in _MODELS:
        raise ValueError(f"Unknown model.family {family!r}; expected one of {FAMILIES}.")
    return _MODELS[family](TransformerConfig.from_config_dict(model_cfg))


def is_encoder_decoder(model: nn.Module) -> bool:
    return isinstance(model, EncoderDecoderTransformer)


class LMHead(NamedTuple):
    """A model's output projection: logits = hidden @ weight^T when `vocab_major` (the tied
    embedding table, [vocab, embed]), else hidden @ weight (the `logits` kernel, [embed, vocab]).
    `hidden` is what `forward(..., return_hidden=True)` returns (a tied head's scaling applied)."""

    weight: jax.Array
    vocab_major: bool


def lm_head(model: nn.Module, params: Any) -> LMHead:
    """The LM head parameters of either family (untied: the top-level `logits` Dense)."""
    if model.config.tie_embeddings:
        return LMHead(params["token_embed"]["embedding"], vocab_major=True)
    return LMHead(params["logits"]["kernel"], vocab_major=False)


def forward(
    model: nn.Module,
    params: Any,
    batch: dict[str, jax.Array],
    *,
    deterministic: bool = True,
    rngs: dict[str, jax.Array] | None = None,
    return_hidden: bool = False,
) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] of either family on a pipeline batch; with
    `return_hidden`, the LM head's input [B, L, d_model] instead (see `lm_head`)."""
    variables = {"params": params}
    if is_encoder_decoder(model):
        return model.apply(
            variables,
            batch["encoder_inputs"],
            batch["decoder_inputs"],
            encoder_segment_ids=batch["encoder_segment_ids"],
            decoder_segment_ids=batch["decoder_segment_ids"],
            encoder_positions=batch["encoder_positions"],
            decoder_positions=batch["decoder_positions"],
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=return_hidden,
        )
    return model.apply(
        variables,
        batch["inputs"],
        segment_ids=batch["segment_ids"],
        positions=batch["positions"],
        deterministic=deterministic,
        rngs=rngs,
        return_hidden=return_hidden,
    )


def init_params(model: nn.Module, rng: jax.Array, batch_size: int) -> Any:
    """Boxed (logically annotated) params, from a [batch_size, 1] dummy input."""
    tokens = jnp.zeros((batch_size, 1), jnp.int32)
    args = (tokens, tokens) if is_encoder_decoder(model) else (tokens,)
    return model.init(rng, *args)["params"]
