"""Preprocessing: text -> token ids -> examples {"inputs", "targets"} of int32 ids.

Causal LM (decoder-only): `targets` is a chunk, `inputs` the same chunk shifted right after the
start token (the tokenizer's BOS, e.g. an imported Llama's; our SentencePiece vocab has none and
starts with the pad id 0).
Encoder-decoder (`inputs` for the encoder, `targets` for the decoder, of different lengths):
prefix LM and seq2seq here, span corruption in `span_corruption.py`.

Pure functions on numpy arrays; `pipeline.py` applies them as grain map / flat-map transforms.
LM documents longer than a chunk are split into chunks, never truncated or dropped; seq2seq
features are truncated (keeping their EOS). Randomised preprocessors take a numpy Generator:
`SeedDocument` gives each document a seed from grain's per-element rng and `chunk_rng` turns
(seed, chunk index) into the chunk's generator, so examples are a pure function of the
pipeline seed and the document's position in the stream, whatever the threads or workers.
"""

from typing import Any

import grain
import numpy as np

from t5x_like.data.sources import record_text

# T5 convention: the pad id starts every decoder input sequence of a vocabulary without a BOS.
BOS_ID = 0


def tokenize(text: str | bytes, vocab: Any, *, add_eos: bool = True) -> np.ndarray:
    """int32 token ids of `text`, followed by EOS unless `add_eos` is False."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    ids = vocab.encode(text)
    if add_eos:
        ids = [*ids, vocab.eos_id]
    return np.asarray(ids, dtype=np.int32)


def split_into_chunks(ids: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Consecutive pieces of `ids` of at most `max_len` tokens that together are all of `ids`."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}.")
    return [ids[i : i + max_len] for i in range(0, len(ids), max_len)]


def causal_lm_example(chunk: np.ndarray, start_id: int = BOS_ID) -> dict[str, np.ndarray]:
    """Teacher forcing: `targets` is the chunk, `inputs` the chunk shifted right after
    `start_id` (the tokenizer's BOS where it has one, else the pad id 0)."""
    targets = np.asarray(chunk, dtype=np.int32)
    inputs = np.concatenate([np.asarray([start_id], np.int32), targets[:-1]])
    return {"inputs": inputs, "targets": targets}


def causal_lm_examples(
    ids: np.ndarray, seq_len: int, start_id: int = BOS_ID
) -> list[dict[str, np.ndarray]]:
    """One causal-LM example per chunk of at most `seq_len` tokens of `ids`."""
    return [causal_lm_example(c, start_id) for c in split_into_chunks(ids, seq_len)]


class TokenizeText(grain.transforms.Map):
    """grain map: a TFDS record -> int32 token ids of its text feature, plus EOS by default."""

    def __init__(self, vocab: Any, text_key: str = "text", add_eos: bool = True):
        self.vocab = vocab
        self.text_key = text_key
        self.add_eos = add_eos

    def map(self, record: Any) -> np.ndarray:
        return tokenize(record_text(record, self.text_key), self.vocab, add_eos=self.add_eos)


class CausalLMChunks(grain.experimental.FlatMapTransform):
    """grain flat map: token ids of one document -> one causal-LM example per chunk."""

    # Used by grain only for MapDataset.flat_map; the pipeline flat-maps an IterDataset, where
    # any number of chunks per document is fine.
    max_fan_out = 1 << 20

    def __init__(self, seq_len: int, start_id: int = BOS_ID):
        self.seq_len = seq_len
        self.start_id = start_id  # Each chunk's first input: the tokenizer's BOS, else pad 0.

    def flat_map(self, ids: np.ndarray) -> list[dict[str, np.ndarray]]:
        return causal_lm_examples(ids, self.seq_len, self.start_id)


def chunk_rng(seed: int, chunk_index: int) -> np.random.Generator:
    """The generator of chunk `chunk_index` of a document whose seed is `seed`."""
    return np.random.default_rng([seed, chunk_index])


class SeedDocument(grain.transforms.RandomMap):
    """grain random map: token ids -> {"ids": ids, "seed": a 63-bit seed for the document}.

    On a MapDataset, grain seeds `rng` from the dataset seed and the element's index, so the
    seed depends only on the document's position in the (shuffled, repeated) stream: not on
    threads, worker processes or where an iterator was restored. A seed, not the generator,
    travels with the data because grain reuses its generators.
    """

    def random_map(self, ids: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        return {"ids": ids, "seed": int(rng.integers(2**63))}


def truncate_with_eos(ids: np.ndarray, max_len: int, eos_id: int) -> np.ndarray:
    """`ids` (ending in EOS) cut to at most `max_len` tokens, the last one still EOS."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}.")
    ids = np.asarray(ids, np.int32)
    if len(ids) <= max_len:
        return ids
    return np.concatenate([ids[: max_len - 1], np.asarray([eos_id], np.int32)])


def prefix_lm_chunk_length(inputs_len: int, targets_len: int) -> int:
    """Raw tokens per prefix-LM chunk: any split point then fits both rows.

    A chunk of n tokens split after p in [1, n - 1] has inputs p <= inputs_len and targets
    n - p + 1 (EOS) <= targets_len for every p exactly when n <= min(inputs_len + 1,
    targets_len). Longer chunks would only fit with the split confined to a narrower band.
    """
    if inputs_len < 1 or targets_len < 2:
        raise ValueError(
            f"Prefix LM needs inputs_len >= 1 and targets_len >= 2 (a token and EOS), got "
            f"{inputs_len} and {targets_len}."
        )
    return min(inputs_len + 1, targets_len)


def prefix_lm_example(
    ids: np.ndarray, rng: np.random.Generator, eos_id: int, *, inputs_len: int, targets_len: int
) -> dict[str, np.ndarray]:
    """A chunk split at a random point: `inputs` the prefix, `targets` the rest plus EOS.

    The split point is uniform over those leaving both sides non-empty with inputs of at most
    `inputs_len` and targets (EOS included) of at most `targets_len` tokens; a single-token
    chunk gives inputs = the token, targets = EOS. Like T5's prefix_lm, but the inputs carry no
    EOS: the encoder sees the prefix as it is, and every inputs token is text.

    Raises:
      ValueError: the chunk is empty or too long to split into rows of those lengths.
    """
    ids = np.asarray(ids, np.int32)
    n = len(ids)
    lo, hi = max(1, n + 1 - targets_len), min(inputs_len, max(n - 1, 1))
    if n == 0 or lo > hi:
        raise ValueError(
            f"A prefix-LM chunk of {n} tokens cannot be split into inputs of <= {inputs_len} "
            f"and targets of <= {targets_len} tokens (EOS included); chunk it first."
        )
    split = int(rng.integers(lo, hi + 1))
    targets = np.concatenate([ids[split:], np.asarray([eos_id], np.int32)])
    return {"inputs": ids[:split], "targets": targets}


class PrefixLMChunks(grain.experimental.FlatMapTransform):
    """grain flat map: {"ids", "seed"} of one document -> one prefix-LM example per chunk.

    The document (token ids without EOS) is cut into chunks of `prefix_lm_chunk_length(...)`
    (the last one shorter), none dropped; chunk i is split with `chunk_rng(seed, i)`.
    """

    # Used by grain only for MapDataset.flat_map; the pipeline flat-maps an IterDataset.
    max_fan_out = 1 << 20

    def __init__(self, eos_id: int, inputs_len: int, targets_len: int):
        self.eos_id = eos_id
        self.inputs_len = inputs_len
        self.targets_len = targets_len
        self.chunk_length = prefix_lm_chunk_length(inputs_len, targets_len)

    def flat_map(self, element: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        return [
            prefix_lm_example(
                chunk,
                chunk_rng(element["seed"], i),
                self.eos_id,
                inputs_len=self.inputs_len,
                targets_len=self.targets_len,
            )
            for i, chunk in enumerate(split_into_chunks(element["ids"], self.chunk_length))
        ]


def seq2seq_example(
    record: Any,
    vocab: Any,
    *,
    inputs_key: str,
    targets_key: str,
    inputs_len: int,
    targets_len: int,
    inputs_prefix: str = "",
) -> dict[str, np.ndarray]:
    """A record's two text features as an encoder-decoder example.

    `inputs` = tokenize(inputs_prefix + record[inputs_key]) + EOS, `targets` =
    tokenize(record[targets_key]) + EOS, each truncated to its length with EOS kept last.
    Values may be str or UTF-8 bytes (TFDS Text features).
    """
    inputs = tokenize(inputs_prefix + record_text(record, inputs_key), vocab)
    targets = tokenize(record_text(record, targets_key), vocab)
    return {
        "inputs": truncate_with_eos(inputs, inputs_len, vocab.eos_id),
        "targets": truncate_with_eos(targets, targets_len, vocab.eos_id),
    }


class Seq2SeqExample(grain.transforms.Map):
    """grain map: a record with two text features -> a truncated seq2seq example."""

    def __init__(
        self,
        vocab: Any,
        *,
        inputs_key: str,
        targets_key: str,
        inputs_len: int,
        targets_len: int,
        inputs_prefix: str = "",
    ):
        self.vocab = vocab
        self.inputs_key = inputs_key
        self.targets_key = targets_key
        self.inputs_len = inputs_len
        self.targets_len = targets_len
        self.inputs_prefix = inputs_prefix

    def map(self, record: Any) -> dict[str, np.ndarray]:
        return seq2seq_example(
            record,
            self.vocab,
            inputs_key=self.inputs_key,
            targets_key=self.targets_key,
            inputs_len=self.inputs_len,
            targets_len=self.targets_len,
            inputs_prefix=self.inputs_prefix,
        )
