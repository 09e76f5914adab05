"""T5's span-corruption objective: noise spans of a chunk replaced by sentinels, to be predicted.

A chunk of token ids is split into alternating non-noise and noise spans (non-noise first):

    chunk   a b c d e f g h i j          noise: c d, h i
    inputs  a b <s0> e f g <s1> j EOS    (each noise span replaced by one sentinel)
    targets <s0> c d <s1> h i EOS        (each sentinel followed by the span it replaced)

Sentinel i is the vocabulary's extra id i (`vocab.extra_id(i)`, T5's `<extra_id_i>`). For a
chunk of `length` tokens, the noise tokens number `round(length * noise_density)` clipped to
[1, length - 1], in `max(1, round(num_noise / mean_noise_span_length))` spans (at most as many
as there are noise and non-noise tokens); the span lengths are a uniformly random composition
of those counts. Chunks of fewer than 2 tokens are left uncorrupted (inputs = chunk + EOS,
targets = EOS): they have no room for a non-noise and a noise span.

Randomness comes only from the numpy Generator given to each call; `pipeline.py` derives it from
the pipeline seed, the record's position in the stream and the chunk's index in its document.
"""

from typing import Any

import grain
import numpy as np

from t5x_like.data.preprocessors import chunk_rng, split_into_chunks

DEFAULT_NOISE_DENSITY = 0.15
DEFAULT_MEAN_NOISE_SPAN_LENGTH = 3.0


def noise_counts(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(noise tokens, noise spans) of a chunk of `length` tokens; (0, 0) below 2 tokens."""
    if length < 2:
        return 0, 0
    # Python's round() rounds halves to even, like T5's tf.round.
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_noise_span_length))
    # Every span, noise or not, holds at least one token.
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def corrupted_lengths(
    length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(inputs, targets) lengths, EOS included, of a corrupted chunk of `length` tokens."""
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def random_spans_helper(
    inputs_length: int,
    noise_density: float = DEFAULT_NOISE_DENSITY,
    mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """(tokens_length, targets_length): the chunk length that fills `inputs_length`, T5-style.

    `tokens_length` is the longest raw chunk whose corrupted inputs (EOS included) have at most
    `inputs_length` tokens. They have exactly `inputs_length` unless the noise spans are capped
    by the non-noise tokens (noise_density / mean_noise_span_length >= 1 - noise_density, e.g.
    density 0.5 with spans of 1), where one more raw token can add 2 input tokens and the
    inputs may fall one short. `targets_length` is the length (EOS included) of that chunk's
    targets, the longest any chunk produces.

    Raises:
      ValueError: `inputs_length` < 3, too short for one kept token, a sentinel and EOS.
    """
    if inputs_length < 3:
        raise ValueError(
            f"inputs_length={inputs_length} is too short for span corruption: the smallest "
            "corrupted chunk (a kept token, a sentinel, EOS) needs 3."
        )

    def inputs_of(n: int) -> int:
        return corrupted_lengths(n, noise_density, mean_noise_span_length)[0]

    # Inputs are never longer than the chunk plus EOS, so inputs_length - 1 tokens always fit;
    # the inputs length never shrinks as the chunk grows, so walk up from there.
    tokens_length = max(2, inputs_length - 1)
    while inputs_of(tokens_length + 1) <= inputs_length:
        tokens_length += 1
    _, targets_length = corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length, targets_length


def _random_composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`parts` positive ints summing to `total`, uniform over all such compositions."""
    if parts == 1:
        return np.asarray([total], np.int64)
    # A composition is a choice of parts - 1 distinct cut points among the total - 1 gaps.
    cuts = np.sort(rng.choice(total - 1, size=parts - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A bool mask of `length`, True on noise: non-noise first, then alternating spans."""
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    if num_spans == 0:
        return np.zeros(length, bool)
    noise_lengths = _random_composition(num_noise, num_spans, rng)
    nonnoise_lengths = _random_composition(length - num_noise, num_spans, rng)
    # Interleave: nonnoise_0, noise_0, nonnoise_1, noise_1, ...
    lengths = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    is_noise = np.tile([False, True], num_spans)
    return np.repeat(is_noise, lengths)


def _sentinels(vocab: Any, count: int) -> np.ndarray:
    if count > vocab.extra_ids:
        raise ValueError(
            f"Span corruption needs {count} sentinels for this chunk but the vocabulary has "
            f"only {vocab.extra_ids} extra ids; load it with more extra_ids."
        )
    return np.asarray([vocab.extra_id(i) for i in range(count)], np.int32)


def corrupt_with_mask(ids: np.ndarray, noise_mask: np.ndarray, vocab: Any) -> dict[str, np.ndarray]:
    """{"inputs", "targets"} of `ids` with the noise spans of `noise_mask` turned to sentinels."""
    ids = np.asarray(ids, np.int32)
    mask = np.asarray(noise_mask, bool)
    if ids.shape != mask.shape:
        raise ValueError(f"ids of shape {ids.shape} but noise mask of shape {mask.shape}.")
    eos = np.asarray([vocab.eos_id], np.int32)
    if not mask.any():
        return {"inputs": np.concatenate([ids, eos]), "targets": eos}
    span_starts = mask & ~np.concatenate([[False], mask[:-1]])
    sentinels = _sentinels(vocab, int(span_starts.sum()))
    span_index = np.cumsum(span_starts) - 1
    # Inputs: each span's first token becomes its sentinel; the span's other tokens go.
    replaced = np.where(span_starts, sentinels[np.maximum(span_index, 0)], ids)
    inputs = np.concatenate([replaced[~mask | span_starts], eos])
    # Targets: the noise tokens, each span preceded by its sentinel.
    noise_lengths = np.bincount(span_index[mask], minlength=len(sentinels))
    offsets = np.concatenate([[0], np.cumsum(noise_lengths)[:-1]]).astype(np.int64)
    targets = np.concatenate([np.insert(ids[mask], offsets, sentinels), eos])
    return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32)}


def span_corruption_example(
    ids: np.ndarray,
    vocab: Any,
    rng: np.random.Generator,
    *,
    noise_density: float = DEFAULT_NOISE_DENSITY,
    mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH,
) -> dict[str, np.ndarray]:
    """One span-corruption example from a chunk of token ids (without EOS).

    Args:
      ids: the chunk's token ids.
      vocab: provides `eos_id`, `extra_ids` and `extra_id(i)` (a `vocab.SentencePieceVocab`).
      rng: the only source of randomness: the same generator state gives the same example.
      noise_density: fraction of the chunk's tokens that are noise.
      mean_noise_span_length: average noise span length.

    Returns:
      int32 `inputs` (kept tokens, one sentinel per noise span, EOS) and `targets` (each
      sentinel followed by its span, EOS).
    """
    mask = random_spans_noise_mask(len(ids), noise_density, mean_noise_span_length, rng)
    return corrupt_with_mask(ids, mask, vocab)


def decode_span_corruption(inputs: np.ndarray, targets: np.ndarray, vocab: Any) -> np.ndarray:
    """The chunk a span-corruption (inputs, targets) pair was made from (int32, no EOS).

    The inverse of `span_corruption_example`: every sentinel of `inputs` is replaced by the
    tokens that follow the same sentinel in `targets`. Anything after an EOS is ignored.

    Raises:
      ValueError: the pair is not well formed (sentinels missing, repeated or out of order).
    """
    sentinel_index = {vocab.extra_id(i): i for i in range(vocab.extra_ids)}

    def until_eos(x: np.ndarray) -> list[int]:
        x = [int(t) for t in np.asarray(x).reshape(-1)]
        return x[: x.index(vocab.eos_id)] if vocab.eos_id in x else x

    spans: list[list[int]] = []
    for token in until_eos(targets):
        if token in sentinel_index:
            if sentinel_index[token] != len(spans):
                raise ValueError(
                    f"targets has sentinel {sentinel_index[token]} where {len(spans)} was due."
                )
            spans.append([])
        elif not spans:
            raise ValueError("targets does not start with a sentinel.")
        else:
            spans[-1].append(token)
    out: list[int] = []
    used = 0
    for token in until_eos(inputs):
        if token in sentinel_index:
            if sentinel_index[token] != used or used >= len(spans):
                raise ValueError(f"inputs has sentinel {sentinel_index[token]} out of order.")
            out.extend(spans[used])
            used += 1
        else:
            out.append(token)
    if used != len(spans):
        raise ValueError(f"targets has {len(spans)} spans but inputs only {used} sentinels.")
    return np.asarray(out, np.int32)


class SpanCorruptionChunks(grain.experimental.FlatMapTransform):
    """grain flat map: {"ids", "seed"} of one document -> one corrupted example per chunk.

    The document (token ids without EOS) is cut into chunks of `tokens_length` (the last one
    shorter), none dropped; chunk i is corrupted with `chunk_rng(seed, i)`.
    """

    # Used by grain only for MapDataset.flat_map; the pipeline flat-maps an IterDataset.
    max_fan_out = 1 << 20

    def __init__(
        self,
        vocab: Any,
        tokens_length: int,
        noise_density: float = DEFAULT_NOISE_DENSITY,
        mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH,
    ):
        self.vocab = vocab
        self.tokens_length = tokens_length
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length

    def flat_map(self, element: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        return [
            span_corruption_example(
                chunk,
                self.vocab,
                chunk_rng(element["seed"], i),
                noise_density=self.noise_density,
                mean_noise_span_length=self.mean_noise_span_length,
            )
            for i, chunk in enumerate(split_into_chunks(element["ids"], self.tokens_length))
        ]
