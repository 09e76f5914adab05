"""Output heads of an encoder (BERT-style): the tied masked-LM head, the pooler and small
classifiers. Every param and activation carries logical axis names.

    MlmHead       dense + erf GELU + LayerNorm (the "transform"), then logits against the
                  token embedding table plus an output bias (BERT's tied decoder).
    Pooler        dense + tanh on the first ([CLS]) token.
    Classifier    a dense layer to `num_outputs` (NSP: 2, sequence labels, token tags, QA
                  start/end).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.initializers import logical_init
from t5x_like.layers.norms import make_norm

# BERT's initialiser for every dense layer and embedding.
INIT_STD = 0.02


def _dense(cfg: TransformerConfig, features: int, axes: tuple[str, str], name: str) -> nn.Module:
    """A biased dense layer with BERT's N(0, 0.02) kernel init."""
    return NormalDense(features=features, kernel_axes=axes, cfg=cfg, name=name)


class NormalDense(nn.Module):
    """y = x @ kernel + bias, kernel ~ N(0, INIT_STD^2) (BERT's init), bias 0."""

    features: int
    kernel_axes: tuple[str, str]
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        kernel = self.param(
            "kernel",
            logical_init(nn.initializers.normal(stddev=INIT_STD), self.kernel_axes),
            (x.shape[-1], self.features),
            cfg.weight_dtype,
        )
        bias = self.param(
            "bias",
            logical_init(nn.initializers.zeros, self.kernel_axes[1:]),
            (self.features,),
            cfg.weight_dtype,
        )
        y = jnp.einsum(
            "...d,df->...f", x.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype)
        )
        return y + bias.astype(cfg.compute_dtype)


class MlmHead(nn.Module):
    """BERT's masked-LM head: transform (dense, erf GELU, LayerNorm) then the tied decoder
    (x @ embedding^T) plus a per-token output bias."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, embedding: jax.Array, return_hidden: bool = False
    ) -> jax.Array:
        """Logits [B, L, vocab] from encoder outputs x [B, L, embed] and the token embedding
        table [vocab, embed]; with `return_hidden`, the transformed x instead (the decoder's
        input; the bias is then not applied)."""
        cfg = self.config
        h = _dense(cfg, cfg.d_model, ("embed", "mlp"), "transform")(x)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = jax.nn.gelu(h, approximate=False)
        h = make_norm(cfg, "transform_norm")(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        bias = self.param(
            "bias",
            logical_init(nn.initializers.zeros, ("vocab",)),
            (cfg.vocab_size,),
            cfg.weight_dtype,
        )
        if return_hidden:
            return h
        table = jnp.asarray(embedding, cfg.compute_dtype)
        logits = jnp.einsum("bld,vd->blv", h, table) + bias.astype(cfg.compute_dtype)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class Pooler(nn.Module):
    """tanh(dense(x[:, 0])): the [CLS] token's summary of the sequence, [B, embed]."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        pooled = jnp.tanh(_dense(cfg, cfg.d_model, ("embed", "mlp"), "dense")(x[:, 0]))
        return nn.with_logical_constraint(pooled, ("batch", "embed"))


class Classifier(nn.Module):
    """A dense layer to `num_outputs` logits over the last axis (labels are never sharded)."""

    config: TransformerConfig
    num_outputs: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense(self.config, self.num_outputs, ("embed", "labels"), "dense")(x)
