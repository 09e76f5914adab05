"""Model families: one adapter per family (models/base.py), registered here by name.

    family = models.get(cfg.model.family)     # a ModelFamily; unknown names: ConfigError
    module = family.build(cfg.model)
    logits = family.apply(module, params, batch)

Code outside models/ asks the adapter and never tests which family it holds; adding a family is
one adapter module (its Flax module and a `ModelFamily` subclass) registered in `_REGISTRY`.
`build_model`, `forward`, `init_params` and `lm_head` are the adapter's methods for callers
holding only a module.
"""

from typing import Any

import flax.linen as nn
import jax

from t5x_like.errors import ConfigError
from t5x_like.models.base import LMHead, ModelFamily
from t5x_like.models.decoder_only import DecoderOnly
from t5x_like.models.encoder_decoder import EncoderDecoder
from t5x_like.models.encoder_only import EncoderOnly

__all__ = [
    "FAMILIES",
    "LMHead",
    "ModelFamily",
    "build_model",
    "family_of",
    "forward",
    "get",
    "init_params",
    "lm_head",
]

_REGISTRY: dict[str, ModelFamily] = {
    f.name: f for f in (DecoderOnly(), EncoderDecoder(), EncoderOnly())
}
FAMILIES = tuple(_REGISTRY)


def get(name: str) -> ModelFamily:
    """The adapter of `model.family` = `name`."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"model.family={name!r} is not supported; choose one of {FAMILIES} (the registered "
            "model families)."
        )
    return _REGISTRY[name]


def family_of(module: nn.Module) -> ModelFamily:
    """The adapter of a module built by one (its decoding twin included)."""
    for family in _REGISTRY.values():
        if isinstance(module, family.module_class):
            return family
    raise TypeError(f"{type(module).__name__} is not the module of a registered model family.")


def build_model(model_cfg: Any) -> nn.Module:
    """Builds the model module for the `model` section of an experiment config."""
    return get(model_cfg.family).build(model_cfg)


def lm_head(model: nn.Module, params: Any) -> LMHead:
    """The LM head parameters of the module's family."""
    return family_of(model).lm_head(model, params)


def forward(
    model: nn.Module,
    params: Any,
    batch: dict[str, jax.Array],
    *,
    deterministic: bool = True,
    rngs: dict[str, jax.Array] | None = None,
    return_hidden: bool = False,
) -> jax.Array:
    """Teacher-forced logits [B, L, vocab] of the module on a pipeline batch; with
    `return_hidden`, the LM head's input [B, L, d_model] instead (see `lm_head`)."""
    return family_of(model).apply(
        model,
        params,
        batch,
        deterministic=deterministic,
        rngs=rngs,
        return_hidden=return_hidden,
    )


def init_params(model: nn.Module, rng: jax.Array, batch_size: int) -> Any:
    """Boxed (logically annotated) params, from a [batch_size, 1] dummy input."""
    return family_of(model).init_params(model, rng, batch_size)
