"""Encoder-decoder Transformer (T5 family): a bidirectional encoder stack and a causal decoder
stack with cross-attention, sharing one token embedding.

T5 v1.1 is a configuration of the shared layers (relative position bias, RMSNorm pre-norm,
no biases, gated-GELU MLP, untied LM head, unscaled attention logits); T5 v1.0 ties the LM head
to the embedding with the d_model**-0.5 logit scaling; the original Transformer is sinusoidal
positions with post-norm and ReLU. `encode` and `decode` are separate methods so that decoding
can run the encoder once.
"""

import dataclasses

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


class EncoderDecoderTransformer(nn.Module):
    """Maps encoder tokens [B, Le] and decoder input tokens [B, Ld] to logits [B, Ld, vocab].

    Packed rows carry segment ids (1..k per example, 0 for padding) and positions (restarting at
    0 per example) for each side; segment k of the decoder row attends to segment k of the
    encoder row only.

    With `decoding`, `decode()` appends its tokens to the decoder's KV cache (the "cache"
    collection, made by `decoding.init_cache` together with the projected encoder outputs).
    """

    config: TransformerConfig
    decoding: bool = False

    def setup(self):
        cfg = self.config
        self.token_embed = Embed(cfg)
        if cfg.position == "learned":
            self.encoder_position_embed = LearnedPositions(cfg)
            self.decoder_position_embed = LearnedPositions(cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        self.encoder = TransformerStack(cfg, causal=False)
        decoder_cfg = dataclasses.replace(cfg, num_layers=cfg.decoder_layers)
        self.decoder = TransformerStack(
            decoder_cfg, cross_attention=True, causal=True, decode=self.decoding
        )
        if self.decoding:
            self.decode_state = DecodeState()
        if not cfg.tie_embeddings:
            self.logits = dense(cfg, cfg.vocab_size, ("embed", "vocab"), use_bias=False)

    def _embed(
        self, tokens: jax.Array, positions: jax.Array, learned: nn.Module | None, det: bool
    ) -> jax.Array:
        x = add_absolute_positions(self.config, self.token_embed(tokens), positions, learned)
        x = self.dropout(x, deterministic=det)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def encode(
        self,
        encoder_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Encoder outputs [B, Le, d_model]."""
        segment_ids, positions = default_segments_and_positions(
            encoder_tokens, encoder_segment_ids, encoder_positions
        )
        learned = getattr(self, "encoder_position_embed", None)
        x = self._embed(encoder_tokens, positions, learned, deterministic)
        mask = make_attention_mask(segment_ids, segment_ids, causal=False)
        x = self.encoder(x, mask, positions, deterministic)
        return self.dropout(x, deterministic=deterministic)

    def decode(
        self,
        encoded: jax.Array,
        decoder_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        return_hidden: bool = False,
    ) -> jax.Array:
        """Logits [B, Ld, vocab] of the decoder over `encoded` [B, Le, d_model]; with
        `return_hidden`, the LM head's input [B, Ld, d_model] instead (see models.lm_head)."""
        cfg = self.config
        if encoder_segment_ids is None:
            encoder_segment_ids, _ = default_segments_and_positions(encoded[..., 0], None, None)
        segment_ids, positions = default_segments_and_positions(
            decoder_tokens, decoder_segment_ids, decoder_positions
        )
        learned = getattr(self, "decoder_position_embed", None)
        x = self._embed(decoder_tokens, positions, learned, deterministic)
        kv_positions = None
        if self.decoding:
            mask, kv_positions = self.decode_state(segment_ids, positions)
        else:
            mask = make_attention_mask(segment_ids, segment_ids, causal=True)
        cross_mask = make_attention_mask(segment_ids, encoder_segment_ids, causal=False)
        x = self.decoder(
            x, mask, positions, deterministic, encoded, cross_mask, kv_positions=kv_positions
        )
        x = self.dropout(x, deterministic=deterministic)
        if return_hidden:
            return self.token_embed.attend_inputs(x) if cfg.tie_embeddings else x
        if cfg.tie_embeddings:
            return self.token_embed.attend(x)
        return nn.with_logical_constraint(self.logits(x), ("batch", "length", "vocab"))

    def __call__(
        self,
        encoder_tokens: jax.Array,
        decoder_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
        return_hidden: bool = False,
    ) -> jax.Array:
        """Teacher-forced logits [B, Ld, vocab] (`return_hidden`: the LM head's input)."""
        encoded = self.encode(encoder_tokens, encoder_segment_ids, encoder_positions, deterministic)
        return self.decode(
            encoded,
            decoder_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            deterministic,
            return_hidden,
        )
