"""Decoder-only Transformer (GPT-2 / LLaMA family): embeddings + causal shared stack + LM head."""

import flax.linen as nn
import jax

from t5x_like.layers.attention import (
    DecodeState,
    default_segments_and_positions,
    make_attention_mask,
)
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import Embed, LearnedPositions, add_absolute_positions
from t5x_like.layers.linear import dense
from t5x_like.layers.transformer import TransformerStack


class DecoderOnlyTransformer(nn.Module):
    """Maps tokens [B, L] to next-token logits [B, L, vocab].

    Packed rows carry `segment_ids` (1..k per document, 0 for padding) and `positions` (restarting
    at 0 for each document); tokens attend only within their own document.

    With `decoding`, each call appends its tokens to the KV cache (the "cache" collection, made by
    `decoding.init_cache`) and attends over everything cached so far.
    """

    config: TransformerConfig
    decoding: bool = False

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        last_logits_only: bool = False,
        return_hidden: bool = False,
    ) -> jax.Array:
        """Logits [B, L, vocab]; with `last_logits_only`, those of the last position only
        [B, 1, vocab]: decoding's prefill needs no others, so the LM head runs on one position.
        With `return_hidden`, the LM head's input [B, L, d_model] instead of logits (scaled as
        a tied head scales it; see models.lm_head), for a loss that applies the head itself."""
        cfg = self.config
        segment_ids, positions = default_segments_and_positions(tokens, segment_ids, positions)

        embed = Embed(cfg, name="token_embed")
        learned = None
        if cfg.position == "learned":
            learned = LearnedPositions(cfg, name="position_embed")
        x = add_absolute_positions(cfg, embed(tokens), positions, learned)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

        kv_positions = None
        if self.decoding:
            mask, kv_positions = DecodeState(name="decode_state")(segment_ids, positions)
        else:
            mask = make_attention_mask(segment_ids, segment_ids, causal=True)
        stack = TransformerStack(cfg, decode=self.decoding, name="decoder")
        x = stack(x, mask, positions, deterministic, kv_positions=kv_positions)
        if last_logits_only:
            x = x[:, -1:]

        if return_hidden:
            return embed.attend_inputs(x) if cfg.tie_embeddings else x
        if cfg.tie_embeddings:
            return embed.attend(x)
        logits = dense(cfg, cfg.vocab_size, ("embed", "vocab"), "logits", use_bias=False)(x)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
