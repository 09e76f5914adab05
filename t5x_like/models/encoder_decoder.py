"""Encoder-decoder Transformer (T5 family): a bidirectional encoder stack and a causal decoder
stack with cross-attention, sharing one token embedding.

T5 v1.1 is a configuration of the shared layers (relative position bias, RMSNorm pre-norm,
no biases, gated-GELU MLP, untied LM head, unscaled attention logits); T5 v1.0 ties the LM head
to the embedding with the d_model**-0.5 logit scaling; the original Transformer is sinusoidal
positions with post-norm and ReLU. `encode` and `decode` are separate methods so that decoding
can run the encoder once. `EncoderDecoder` is the family's adapter.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.errors import ConfigError
from t5x_like.layers.attention import (
    DecodeState,
    default_segments_and_positions,
    make_attention_mask,
)
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import Embed, LearnedPositions, add_absolute_positions
from t5x_like.layers.linear import dense
from t5x_like.layers.transformer import TransformerStack
from t5x_like.models.base import Batch, ModelFamily, matmul_params

# Tasks making encoder-decoder rows, named in the error for a task this family cannot read.
_TASKS = ("span_corruption", "prefix_lm", "seq2seq")
# The decoder's start token (T5: the pad id).
_START_ID = 0


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


def _cross_kv_params(params: Any) -> int:
    """The decoder's cross-attention key/value projections (they read the encoder outputs)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        if "cross_attention" in keys and ("key" in keys or "value" in keys):
            total += math.prod(leaf.shape)
    return total


def train_flops_per_token(
    params: Any, cfg: TransformerConfig, inputs_len: int, targets_len: int
) -> float:
    """Encoder-decoder training FLOPs per token, averaged over encoder and decoder tokens (see
    `EncoderDecoder.train_flops_per_token`)."""
    encoder = matmul_params(params.get("encoder", {}), cfg)
    cross_kv = _cross_kv_params(params)
    decoder = matmul_params(params, cfg) - encoder - cross_kv  # Decoder stack and LM head.
    d_attn = cfg.num_heads * cfg.qkv_dim
    encoder_attention = cfg.num_layers * inputs_len**2
    decoder_attention = cfg.decoder_layers * targets_len * (targets_len + inputs_len)
    attention = 12 * d_attn * (encoder_attention + decoder_attention)
    matmuls = (encoder + cross_kv) * inputs_len + decoder * targets_len
    return (6.0 * matmuls + attention) / (inputs_len + targets_len)


class EncoderDecoder(ModelFamily):
    """The encoder-decoder family: encoder rows of inputs, decoder rows of shifted targets;
    decoding runs the encoder once on the prompts and starts the decoder from the pad id."""

    name = "encoder_decoder"
    module_class = EncoderDecoderTransformer
    features = (
        "encoder_inputs",
        "encoder_segment_ids",
        "encoder_positions",
        "decoder_inputs",
        "decoder_segment_ids",
        "decoder_positions",
        "targets",
        "weights",
    )
    segment_ids_key = "decoder_segment_ids"
    prompt_keys = ("encoder_inputs", "encoder_segment_ids")
    supports_decoded_metrics = True
    hf_model_types = ("t5",)

    def apply(
        self,
        module: nn.Module,
        params: Any,
        batch: Batch,
        *,
        deterministic: bool = True,
        rngs: dict[str, jax.Array] | None = None,
        return_hidden: bool = False,
    ) -> jax.Array:
        return module.apply(
            {"params": params},
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

    def dummy_inputs(self, batch_size: int) -> tuple[jax.Array, ...]:
        tokens = jnp.zeros((batch_size, 1), jnp.int32)
        return (tokens, tokens)

    def row_lengths(self, task: Any) -> dict[str, int]:
        lengths = task.features
        return {"encoder": lengths["encoder_inputs"], "decoder": lengths["decoder_inputs"]}

    def train_flops_per_token(self, params: Any, cfg: TransformerConfig, task: Any) -> float:
        """Per example 6 * (N_enc * T_enc + N_dec * T_dec + N_xkv * T_enc)
        + 12 * d_attn * (L_enc * T_enc^2 + L_dec * T_dec * (T_dec + T_enc)), N_xkv the decoder's
        cross-attention key/value projections (applied to the T_enc encoder outputs) and N_dec
        the rest of the decoder with the LM head; divided by T_enc + T_dec to give FLOPs per
        (encoder or decoder) token."""
        lengths = self.row_lengths(task)
        return train_flops_per_token(params, cfg, lengths["encoder"], lengths["decoder"])

    def _validate_model_fields(self, model_cfg: Any) -> None:
        value = model_cfg.num_decoder_layers
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
        if not ok:
            raise ConfigError(f"model.num_decoder_layers={value!r} must be a positive integer.")

    def _task_mismatch(self, task: Any) -> str:
        return (
            f"data.task={task.name!r} makes decoder-only rows but model.family="
            f"'encoder_decoder'; use one of {_TASKS}."
        )

    def decode_context(self, module: nn.Module, params: Any, prompts: Batch) -> Any:
        """(encoder outputs, encoder segment ids)."""
        encoded = module.apply(
            {"params": params},
            prompts["encoder_inputs"],
            prompts["encoder_segment_ids"],
            method="encode",
        )
        return encoded, prompts["encoder_segment_ids"]

    def decode_apply(
        self,
        module: nn.Module,
        variables: dict[str, Any],
        tokens: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        context: Any,
        *,
        init_cache: bool = False,
        last_only: bool = False,
    ) -> tuple[jax.Array, dict[str, Any]]:
        # No `last_only` here: an encoder-decoder prefill is the start token alone. The encoder
        # outputs are read once, when the cache is made: their keys/values are cached.
        encoded, encoder_segment_ids = context
        return module.apply(
            variables,
            encoded if init_cache else None,
            tokens,
            encoder_segment_ids,
            segment_ids,
            positions,
            method="decode",
            mutable=["cache"],
        )

    def prefill_inputs(self, prompts: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The start token alone (the prompts went to the encoder)."""
        batch = prompts["encoder_inputs"].shape[0]
        tokens = jnp.full((batch, 1), _START_ID, jnp.int32)
        return tokens, jnp.ones_like(tokens), jnp.zeros_like(tokens)

    def tile_context(self, context: Any, beams: int) -> Any:
        encoded, encoder_segment_ids = context
        return encoded, jnp.repeat(encoder_segment_ids, beams, axis=0)

    def prompt_batch(
        self,
        vocab: Any,
        prompts: Sequence[str],
        batch_rows: int,
        width: int,
        task: Any,
        start_id: int,
    ) -> dict[str, np.ndarray]:
        """`task.inputs_prefix` + the prompt, + EOS, at most `task.inputs_len` tokens."""
        length = task.inputs_len
        tokens = np.zeros((batch_rows, length), np.int32)
        for row, prompt in enumerate(prompts):
            ids = vocab.encode_with_sentinels(task.inputs_prefix + prompt)
            ids = ids[: length - 1]
            tokens[row, : len(ids) + 1] = [*ids, vocab.eos_id]
        return {"encoder_inputs": tokens, "encoder_segment_ids": (tokens > 0).astype(np.int32)}

    def check_prompt_fits(self, width: int, max_new_tokens: int, cfg: TransformerConfig) -> None:
        """Nothing to check: the prompt goes to the encoder, cut to data.inputs_len."""
