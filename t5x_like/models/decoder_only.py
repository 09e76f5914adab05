"""Decoder-only Transformer (GPT-2 / LLaMA family): embeddings + causal shared stack + LM head."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like.layers.attention import make_attention_mask
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import Embed, LearnedPositions, sinusoidal_positions
from t5x_like.layers.linear import dense
from t5x_like.layers.transformer import TransformerStack


class DecoderOnlyTransformer(nn.Module):
    """Maps tokens [B, L] to next-token logits [B, L, vocab].

    Packed rows carry `segment_ids` (1..k per document, 0 for padding) and `positions` (restarting
    at 0 for each document); tokens attend only within their own document.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)

        embed = Embed(cfg, name="token_embed")
        x = embed(tokens)
        if cfg.position == "learned":
            x = x + LearnedPositions(cfg, name="position_embed")(positions)
        elif cfg.position == "sinusoidal":
            x = x + sinusoidal_positions(positions, cfg.d_model).astype(x.dtype)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        mask = make_attention_mask(segment_ids, segment_ids, causal=True)
        x = TransformerStack(cfg, name="decoder")(x, mask, positions, deterministic)

        if cfg.tie_embeddings:
            return embed.attend(x)
        logits = dense(cfg, cfg.vocab_size, ("embed", "vocab"), "logits", use_bias=False)(x)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
