"""Decoder-only Transformer (GPT-2 / LLaMA family): embeddings + causal shared stack + LM head,
and its family adapter (`DecoderOnly`)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.errors import ConfigError
from t5x_like.layers import initializers
from t5x_like.layers.attention import (
    DecodeState,
    default_segments_and_positions,
    make_attention_mask,
)
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import Embed, LearnedPositions, add_absolute_positions
from t5x_like.layers.linear import dense
from t5x_like.layers.transformer import TransformerStack
from t5x_like.models.base import Batch, DecodeEvalBatch, ModelFamily, matmul_params


class DecoderOnlyTransformer(nn.Module):
    """Maps tokens [B, L] to next-token logits [B, L, vocab].

    Packed rows carry `segment_ids` (1..k per document, 0 for padding) and `positions` (restarting
    at 0 for each document); tokens attend only within their own document.

    With `decoding`, each call appends its tokens to the KV cache (the "cache" collection, made by
    `decoding.init_cache`) and attends over everything cached so far.

    `embed_init_std` and `scale_residual_init` are the GPT-2/LLaMA init scheme (config fields
    model.embed_init_std, model.scale_residual_init); `DecoderOnly.init_params` applies them
    to the layers' standard init (see `init_scale_factor`). The defaults here are the layers'
    own init (N(0, 1) embedding, unscaled residual projections), as the HF importers expect
    nothing of them.
    """

    config: TransformerConfig
    decoding: bool = False
    embed_init_std: float = 1.0
    scale_residual_init: bool = False

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
            if cfg.final_logit_softcap is not None:  # The fused head + loss would not cap.
                raise ConfigError(
                    f"model.final_logit_softcap={cfg.final_logit_softcap} needs the full logits: "
                    "set train.loss_chunk_size=0."
                )
            return embed.attend_inputs(x) if cfg.tie_embeddings else x
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = dense(cfg, cfg.vocab_size, ("embed", "vocab"), "logits", use_bias=False)(x)
        if cfg.final_logit_softcap is not None:  # Gemma 2: cap * tanh(logits / cap).
            cap = cfg.final_logit_softcap
            logits = jnp.tanh(logits / cap) * cap
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def left_pad(prompts: Sequence[Sequence[int]], length: int | None = None) -> dict[str, np.ndarray]:
    """Decoder-only prompts as a left-padded batch: {"tokens", "segment_ids"} [B, length]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token.")
    longest = max(len(p) for p in prompts)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"A prompt of {longest} tokens does not fit length={length}.")
    tokens = np.zeros((len(prompts), length), np.int32)
    segment_ids = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt) :] = prompt
        segment_ids[row, length - len(prompt) :] = 1
    return {"tokens": tokens, "segment_ids": segment_ids}


# Kernels that write into the residual stream: each residual branch's output projection.
_RESIDUAL_OUTPUTS = (("self_attention", "out", "kernel"), ("mlp", "wo", "kernel"))


def init_scale_factor(module: DecoderOnlyTransformer) -> Any:
    """The init scheme as a multiplier of each freshly initialised parameter, by path.

    The token embedding is created N(0, 1) (layers.embeddings.Embed): times embed_init_std it
    is N(0, embed_init_std^2), and so are the tied head's logits (scaled by d_model**-0.5) at
    init; an untied head's fan-in kernel (logits ~N(0, 1)) gets the same factor. Small logits
    start every depth at ln V: with N(0, 1) rows the input token's own logit was ~sqrt(d_model)
    through a shallow residual stream, a first loss nats above ln V. The residual branches'
    output projections get 1/sqrt(2 * num_layers) (two branches per layer), GPT-2's scaling:
    the stream's variance at init stays independent of depth.
    """
    residual = (2 * module.config.num_layers) ** -0.5 if module.scale_residual_init else 1.0

    def factor(names: tuple[str, ...]) -> float:
        if names[-2:] in (("token_embed", "embedding"), ("logits", "kernel")):
            return module.embed_init_std
        if names[-3:] in _RESIDUAL_OUTPUTS:
            return residual
        return 1.0

    return factor


class DecoderOnly(ModelFamily):
    """The decoder-only family: rows of `inputs` (targets shifted right) predicting `targets`;
    prompts are left-padded so that every row decodes at the same cache index."""

    name = "decoder_only"
    module_class = DecoderOnlyTransformer
    features = ("inputs", "targets", "segment_ids", "positions", "weights")
    segment_ids_key = "segment_ids"
    prompt_keys = ("tokens", "segment_ids")
    supports_decoded_metrics = True
    # Only SFT rows say where the prompt ends (their loss mask); causal_lm rows do not.
    decoded_metrics_tasks = ("sft",)
    hf_model_types = (
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
    )

    def build(self, model_cfg: Any) -> nn.Module:
        """The module, with the config's init scheme (embed_init_std, scale_residual_init)."""
        return DecoderOnlyTransformer(
            TransformerConfig.from_config_dict(model_cfg),
            embed_init_std=float(model_cfg.get("embed_init_std", 1.0)),
            scale_residual_init=bool(model_cfg.get("scale_residual_init", False)),
        )

    def init_params(self, module: nn.Module, rng: jax.Array, batch_size: int) -> Any:
        """The layers' init rescaled by the module's init scheme (`init_scale_factor`)."""
        params = super().init_params(module, rng, batch_size)
        return initializers.rescale(params, init_scale_factor(module))

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
            batch["inputs"],
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=return_hidden,
        )

    def dummy_inputs(self, batch_size: int) -> tuple[jax.Array, ...]:
        return (jnp.zeros((batch_size, 1), jnp.int32),)

    def row_lengths(self, task: Any) -> dict[str, int]:
        return {"decoder": task.features["inputs"]}

    def train_flops_per_token(self, params: Any, cfg: TransformerConfig, task: Any) -> float:
        """6 * N + 12 * L * T * d_attn: N the parameters used in matmuls (`matmul_params`),
        L the layers, T the row length, d_attn = heads * head_dim; attention scores and values
        counted over the full (not causal) square, as dense attention computes them."""
        return train_flops_per_token(params, cfg, self.row_lengths(task)["decoder"])

    def _validate_model_fields(self, model_cfg: Any) -> None:
        """Nothing beyond the shared model checks."""

    def _task_mismatch(self, task: Any) -> str:
        return (
            f"data.task={task.name!r} makes encoder-decoder rows but model.family={self.name!r}; "
            "use data.task='causal_lm' or model.family='encoder_decoder'."
        )

    def decode_context(self, module: nn.Module, params: Any, prompts: Batch) -> Any:
        return None

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
        return module.apply(
            variables,
            tokens,
            segment_ids=segment_ids,
            positions=positions,
            last_logits_only=last_only,
            mutable=["cache"],
        )

    def prefill_inputs(self, prompts: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The left-padded prompts; positions count from 0 at each row's first real token."""
        tokens = jnp.asarray(prompts["tokens"], jnp.int32)
        segment_ids = jnp.asarray(prompts["segment_ids"], jnp.int32)
        positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
        return tokens, segment_ids, positions

    def decode_max_new_tokens(self, task: Any) -> int:
        """A row's length: the longest completion after a prompt of one token (BOS)."""
        return task.seq_len

    def decode_eval_batch(self, batch: Batch, task: Any) -> DecodeEvalBatch:
        """SFT rows (one example each) split where their loss mask starts: the prompt is the
        inputs up to the one predicting the completion's first token (BOS, the prompt's
        tokens), left-padded; the reference is the completion (EOS included); a row of
        P prompt tokens keeps L - P + 1 generated tokens, what a row of L would hold, so no
        kept token comes from a position the model was not trained at."""
        segments = batch["segment_ids"] > 0
        completion = segments & (batch["weights"] > 0)
        # Prompt positions: no completion target before them (the first one's input included).
        before = jnp.cumsum(completion, axis=1) - completion
        in_prompt = segments & (before == 0)
        # Left-pad: a stable sort puts each row's prompt positions last, in order.
        order = jnp.argsort(in_prompt, axis=1, stable=True)
        tokens = jnp.take_along_axis(jnp.where(in_prompt, batch["inputs"], 0), order, axis=1)
        prompt_segments = jnp.take_along_axis(in_prompt, order, axis=1).astype(jnp.int32)
        # A row without an example (eval top-up) decodes one pad token instead of nothing.
        prompt_segments = prompt_segments.at[:, -1].set(1)
        prompt_len = jnp.sum(in_prompt, axis=1)
        targets = batch["targets"]
        return DecodeEvalBatch(
            prompts={"tokens": tokens.astype(jnp.int32), "segment_ids": prompt_segments},
            targets=jnp.where(completion, targets, 0),
            inputs=jnp.where(segments & ~completion, targets, 0),
            keep=(targets.shape[1] - prompt_len + 1).astype(jnp.int32),
        )

    def prompt_batch(
        self,
        vocab: Any,
        prompts: Sequence[str],
        batch_rows: int,
        width: int,
        task: Any,
        start_id: int,
    ) -> dict[str, np.ndarray]:
        """The start token and the prompt's pieces (no EOS), left-padded to `width`."""
        encoded = [[start_id, *vocab.encode_with_sentinels(p)] for p in prompts]
        encoded += [[start_id]] * (batch_rows - len(encoded))
        return left_pad(encoded, length=width)

    def check_prompt_fits(self, width: int, max_new_tokens: int, cfg: TransformerConfig) -> None:
        if cfg.position == "learned" and width + max_new_tokens > cfg.max_len:
            raise ValueError(
                f"A prompt of {width} tokens plus max_new_tokens={max_new_tokens} "
                f"exceeds the learned position table (model.max_len="
                f"{cfg.max_len}): shorten the prompt or generate fewer tokens."
            )


def train_flops_per_token(params: Any, cfg: TransformerConfig, seq_len: int) -> float:
    """Decoder-only training FLOPs per token at sequence length `seq_len` (see
    `DecoderOnly.train_flops_per_token`)."""
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.qkv_dim
    return 6.0 * matmul_params(params, cfg) + attention
