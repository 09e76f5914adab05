"""Autoregressive decoding with a KV cache: greedy, sampling and beam search, both families.

    prompts = left_pad([[12, 7, 9], [4]])                     # decoder-only prompts
    out = generate(model, params, prompts, DecodeConfig(strategy="sample", top_p=0.9), eos_id=1)
    out.tokens  # [batch, max_new_tokens]: EOS included, pad (0) after it

Decoder-only prompts are **left-padded** (`left_pad`): every row's last prompt token sits in
the last column, so all rows decode in lockstep at one cache index; positions count from 0 at
each row's first real token, and padding is masked out of attention. Encoder-decoder models
take `encoder_inputs` / `encoder_segment_ids` (any padding) and start the decoder from the pad
id, T5's start token; the encoder runs once and its projected keys/values are cached.

The loop is a prefill over the prompt (the LM head at its last position only) followed by
one-token steps, each attending over the cache (`layers.attention`, heads-major so XLA reads it
in place), until every row has emitted EOS or `max_new_tokens` are out.
Greedy and sampled rows also end on a `stop_ids` sequence (stop strings' tokens, when the
caller has them; `cut_at_stop` cuts the decoded text at the strings themselves, which is what
counts: a stop string can be generated as other tokens; beam search leaves stops to the text).
Sampling draws from `fold_in(PRNGKey(seed), step)`, so a seed reproduces its samples. Beam
search ranks beams by their summed log-probability and picks each row's best finished beam by
that sum divided by the GNMT length penalty ((5 + length) / 6) ** length_penalty.
Everything is pure and jittable (the config is a static, hashable dataclass).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like import models
from t5x_like.layers import xla_cpu
from t5x_like.models.decoder_only import left_pad

__all__ = [
    "CachedDecoder",
    "DecodeConfig",
    "DecodeOutput",
    "cut_at_stop",
    "generate",
    "left_pad",
    "stop_token_ids",
]

PAD_ID = 0  # Also T5's decoder start token.
STRATEGIES = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to decode.

    Attributes:
      strategy: "greedy", "sample" (temperature, then top-k, then top-p) or "beam".
      max_new_tokens: tokens generated per row at most (EOS included).
      temperature: sampling temperature (> 0; greedy and beam ignore it, 0 included).
      top_k: sample among the k most likely tokens only (0: all).
      top_p: sample from the smallest set of tokens whose probability reaches p (1.0: all).
      num_beams: beams per row for beam search.
      length_penalty: GNMT alpha for beam search (0: rank finished beams by raw log-prob).
      seed: sampling seed.
      stop_ids: token sequences that end a row once it has generated one (besides EOS), e.g.
        the ids of a stop string (`stop_token_ids`); the sequence stays in the output. Text-level
        stop strings are applied afterwards by `cut_at_stop`, which this only makes faster.
    """

    strategy: str = "greedy"
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    length_penalty: float = 0.6
    seed: int = 0
    stop_ids: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: choose one of {STRATEGIES}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        # Only sampling divides by the temperature: greedy and beam ignore it (0 included).
        positive = math.isfinite(self.temperature) and self.temperature > 0
        if self.strategy == "sample" and not positive:
            raise ValueError(
                f"temperature={self.temperature} must be a finite number > 0 for sampling "
                "(for temperature 0 use --strategy=greedy)."
            )
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature={self.temperature} must be a finite number >= 0.")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables it).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 disables it).")
        if self.num_beams < 1:
            raise ValueError(f"num_beams={self.num_beams} must be >= 1.")
        if not (math.isfinite(self.length_penalty) and self.length_penalty >= 0):
            raise ValueError(
                f"length_penalty={self.length_penalty} must be a finite number >= 0 "
                "(0: rank beams by their summed log-probability; T5 uses 0.6)."
            )
        if any(not seq for seq in self.stop_ids):
            raise ValueError(f"stop_ids={self.stop_ids!r}: every stop sequence needs a token.")


class DecodeOutput(NamedTuple):
    """What `generate` returns."""

    tokens: jax.Array  # [B, max_new_tokens] int32: EOS included, PAD_ID after it.
    scores: jax.Array  # [B] float32: summed log-probs (beam: divided by the length penalty).
    lengths: jax.Array  # [B] int32: generated tokens, EOS included.


def _cache_batch_axis(path: tuple[Any, ...], scanned: bool) -> int | None:
    """Axis of a cache leaf that indexes the batch (None for the scalar write indices)."""
    names = [str(getattr(k, "key", k)) for k in path]
    if names[-1] in ("index", "cache_index"):
        return None
    return 1 if scanned and "layers" in names else 0


def _map_cache_batch(fn: Any, cache: Any, scanned: bool) -> Any:
    def apply(path: tuple[Any, ...], leaf: jax.Array) -> jax.Array:
        axis = _cache_batch_axis(path, scanned)
        return leaf if axis is None else fn(leaf, axis)

    return jax.tree_util.tree_map_with_path(apply, cache)


class CachedDecoder:
    """The model in decoding mode: cache creation and cached forward steps (what `generate`
    loops over; also handy to score given continuations with the cache). What differs between
    model families (the encoder pass, the prefill's inputs) comes from the family's adapter."""

    def __init__(self, model: nn.Module, params: Any, prompts: dict[str, jax.Array]):
        self.family = models.family_of(model)
        self.model = model.clone(decoding=True)
        self.params = params
        self.scanned = model.config.scan_layers
        self.context = self.family.decode_context(model, params, prompts)

    def _apply(
        self,
        variables: dict[str, Any],
        tokens: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        *,
        init_cache: bool = False,
        last_only: bool = False,
    ) -> tuple[jax.Array, dict[str, Any]]:
        return self.family.decode_apply(
            self.model,
            variables,
            tokens,
            segment_ids,
            positions,
            self.context,
            init_cache=init_cache,
            last_only=last_only,
        )

    def init_cache(self, batch_size: int, max_len: int) -> Any:
        """An empty cache of `max_len` slots (encoder keys/values already projected)."""
        dummy = jnp.zeros((batch_size, max_len), jnp.int32)
        variables = {"params": self.params}
        _, variables = self._apply(variables, dummy, dummy + 1, dummy, init_cache=True)
        return variables["cache"]

    def step(
        self, cache: Any, tokens, segment_ids, positions, *, last_only: bool = False
    ) -> tuple[jax.Array, Any]:
        """Logits [B, T, V] of the new tokens (`last_only`: [B, 1, V] of the last one; the
        LM head then skips the others), and the cache with the tokens appended."""
        variables = {"params": self.params, "cache": cache}
        logits, variables = self._apply(
            variables, tokens, segment_ids, positions, last_only=last_only
        )
        logits = logits[:, -1:] if last_only else logits
        return logits.astype(jnp.float32), variables["cache"]

    def tile(self, cache: Any, beams: int) -> Any:
        """Each row's cache repeated for its beams (rows b*beams .. b*beams+beams-1)."""
        self.context = self.family.tile_context(self.context, beams)
        repeat = lambda x, axis: jnp.repeat(x, beams, axis=axis)  # noqa: E731
        return _map_cache_batch(repeat, cache, self.scanned)

    def reorder(self, cache: Any, rows: jax.Array) -> Any:
        """The cache rows `rows` [B * beams] (beam search keeps the best continuations)."""
        return _map_cache_batch(lambda x, axis: jnp.take(x, rows, axis=axis), cache, self.scanned)


def _filter_logits(logits: jax.Array, config: DecodeConfig) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus): logits outside the set become -inf."""
    logits = logits / config.temperature
    if config.top_k:
        kth = jax.lax.top_k(logits, min(config.top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if config.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep a token if the tokens before it have not reached p yet (the first one always).
        keep_sorted = (cumulative - jax.nn.softmax(sorted_logits, axis=-1)) < config.top_p
        keep = (
            jnp.zeros_like(keep_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(keep_sorted)
        )
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def _prefill(
    decoder: CachedDecoder, prompts: dict[str, jax.Array], config: DecodeConfig
) -> tuple[Any, jax.Array, jax.Array]:
    """(cache, last logits [B, V], next positions [B]) after the prompt."""
    tokens, segment_ids, positions = decoder.family.prefill_inputs(prompts)
    batch, prompt_len = tokens.shape
    cache = decoder.init_cache(batch, prompt_len + config.max_new_tokens)
    logits, cache = decoder.step(cache, tokens, segment_ids, positions, last_only=True)
    return cache, logits[:, -1], positions[:, -1] + 1


def _sample_loop(decoder, cache, logits, positions, config, eos_id) -> DecodeOutput:
    batch, steps = logits.shape[0], config.max_new_tokens
    rng = jax.random.PRNGKey(config.seed)

    def body(carry):
        i, cache, logits, tokens, done, scores, positions = carry
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        if config.strategy == "greedy":
            token = xla_cpu.argmax(logits)
        else:
            filtered = _filter_logits(logits, config)
            token = jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)
        token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
        picked = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        scores = scores + jnp.where(done, 0.0, picked)
        tokens = tokens.at[:, i].set(token)
        done = done | jnp.isin(token, jnp.asarray(eos_id))
        done = done | _ends_with_stop(tokens, i, config.stop_ids)
        ones = jnp.ones((batch, 1), jnp.int32)
        logits, cache = decoder.step(cache, token[:, None], ones, positions[:, None])
        return i + 1, cache, logits[:, -1], tokens, done, scores, positions + 1

    def cond(carry):
        i, done = carry[0], carry[4]
        return (i < steps) & ~jnp.all(done)

    init = (
        jnp.zeros((), jnp.int32),
        cache,
        logits,
        jnp.full((batch, steps), PAD_ID, jnp.int32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.float32),
        positions,
    )
    _, _, _, tokens, _, scores, _ = jax.lax.while_loop(cond, body, init)
    return DecodeOutput(tokens, scores, _lengths(tokens, eos_id))


def _ends_with_stop(
    tokens: jax.Array, i: jax.Array, stop_ids: tuple[tuple[int, ...], ...]
) -> jax.Array:
    """[B] bool: whether row b's tokens[b, : i + 1] end with one of the `stop_ids` sequences."""
    hit = jnp.zeros(tokens.shape[:-1], bool)
    for seq in stop_ids:
        n = len(seq)
        if n > tokens.shape[-1]:
            continue  # Longer than the whole output: it can never be generated.
        tail = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(i + 1 - n, 0), n, axis=-1)
        hit = hit | ((i + 1 >= n) & jnp.all(tail == jnp.asarray(seq, tokens.dtype), axis=-1))
    return hit


def stop_token_ids(vocab: Any, stop: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The `DecodeConfig.stop_ids` of stop strings: each string's token ids when they decode
    back to exactly that string (so a row ending in them contains it); a string the vocabulary
    renders otherwise (a leading space SentencePiece drops, say) is left to `cut_at_stop`."""
    ids = []
    for text in stop:
        encoded = tuple(int(t) for t in vocab.encode(text))
        if encoded and vocab.decode(encoded) == text and encoded not in ids:
            ids.append(encoded)
    return tuple(ids)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s and (at := text.find(s)) >= 0:
            cut = min(cut, at)
    return text[:cut]


def _lengths(tokens: jax.Array, eos_id: tuple[int, ...]) -> jax.Array:
    """Tokens up to and including the first EOS (any of `eos_id`; all of them without one)."""
    is_eos = jnp.isin(tokens, jnp.asarray(eos_id))
    first = jnp.argmax(is_eos, axis=-1)
    return jnp.where(is_eos.any(axis=-1), first + 1, tokens.shape[1]).astype(jnp.int32)


def _length_penalty(lengths: jax.Array, alpha: float) -> jax.Array:
    return ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** alpha


def _beam_loop(decoder, cache, logits, positions, config, eos_id) -> DecodeOutput:
    batch, vocab = logits.shape
    beams, steps = config.num_beams, config.max_new_tokens
    cache = decoder.tile(cache, beams)
    logits = jnp.repeat(logits, beams, axis=0)
    positions = jnp.repeat(positions, beams, axis=0)
    # All beams start identical: only the first may expand, or the top-k would be k copies.
    scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (beams - 1)), (batch, 1))
    # A finished beam continues with PAD at no cost, so it keeps its score and place.
    finished_continuation = jnp.full((vocab,), -jnp.inf).at[PAD_ID].set(0.0)

    def body(carry):
        i, cache, logits, tokens, done, scores, positions = carry
        log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, vocab)
        log_probs = jnp.where(done[..., None], finished_continuation, log_probs)
        candidates = (scores[..., None] + log_probs).reshape(batch, beams * vocab)
        scores, flat = jax.lax.top_k(candidates, beams)
        parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1).at[:, :, i].set(token)
        done = jnp.take_along_axis(done, parent, axis=1) | jnp.isin(token, jnp.asarray(eos_id))
        rows = (jnp.arange(batch)[:, None] * beams + parent).reshape(-1)
        cache = decoder.reorder(cache, rows)
        ones = jnp.ones((batch * beams, 1), jnp.int32)
        logits, cache = decoder.step(cache, token.reshape(-1, 1), ones, positions[:, None])
        return i + 1, cache, logits[:, -1], tokens, done, scores, positions + 1

    def cond(carry):
        i, done = carry[0], carry[4]
        return (i < steps) & ~jnp.all(done)

    init = (
        jnp.zeros((), jnp.int32),
        cache,
        logits,
        jnp.full((batch, beams, steps), PAD_ID, jnp.int32),
        jnp.zeros((batch, beams), bool),
        scores,
        positions,
    )
    _, _, _, tokens, _, scores, _ = jax.lax.while_loop(cond, body, init)
    lengths = _lengths(tokens.reshape(batch * beams, steps), eos_id).reshape(batch, beams)
    final = scores / _length_penalty(lengths, config.length_penalty)
    best = jnp.argmax(final, axis=-1)
    pick = lambda x: jnp.take_along_axis(x, best[:, None], axis=1)[:, 0]  # noqa: E731
    best_tokens = jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
    return DecodeOutput(best_tokens, pick(final), pick(lengths))


def generate(
    model: nn.Module,
    params: Any,
    prompts: dict[str, jax.Array],
    config: DecodeConfig,
    *,
    eos_id: int | Sequence[int] | None,
) -> DecodeOutput:
    """Decodes `config.max_new_tokens` tokens after each prompt with the KV cache.

    Args:
      model: the module of a registered model family (training mode; its
        decoding twin is derived here).
      params: its params (unboxed), on any mesh.
      prompts: decoder-only: {"tokens", "segment_ids"} [B, P], left-padded (`left_pad`);
        encoder-decoder: {"encoder_inputs", "encoder_segment_ids"} [B, L].
      config: the strategy and its settings.
      eos_id: the token that ends a row, or several (Llama 3's <|end_of_text|> and
        <|eot_id|>: any of them ends it); None: always decode max_new_tokens.
    """
    decoder = CachedDecoder(model, params, prompts)
    cache, logits, positions = _prefill(decoder, prompts, config)
    # -1 is never sampled: rows run to the end.
    if eos_id is None:
        eos: tuple[int, ...] = (-1,)
    elif isinstance(eos_id, Sequence):
        eos = tuple(int(i) for i in eos_id)
    else:
        eos = (int(eos_id),)
    loop = _beam_loop if config.strategy == "beam" else _sample_loop
    return loop(decoder, cache, logits, positions, config, eos)
