"""Causal language-model preprocessing: text -> token ids -> chunks -> (inputs, targets).

Pure functions on numpy arrays; `pipeline.py` applies them as grain map / flat-map transforms.
Documents longer than the sequence are split into chunks, never truncated or dropped.
"""

from typing import Any

import grain
import numpy as np

from t5x_like.data.sources import record_text

# T5 convention: the pad id starts every decoder input sequence (there is no BOS).
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


def causal_lm_example(chunk: np.ndarray) -> dict[str, np.ndarray]:
    """Teacher forcing: `targets` is the chunk, `inputs` the chunk shifted right after BOS (0)."""
    targets = np.asarray(chunk, dtype=np.int32)
    inputs = np.concatenate([np.asarray([BOS_ID], np.int32), targets[:-1]])
    return {"inputs": inputs, "targets": targets}


def causal_lm_examples(ids: np.ndarray, seq_len: int) -> list[dict[str, np.ndarray]]:
    """One causal-LM example per chunk of at most `seq_len` tokens of `ids`."""
    return [causal_lm_example(c) for c in split_into_chunks(ids, seq_len)]


class TokenizeText(grain.transforms.Map):
    """grain map: a TFDS record -> int32 token ids of its text feature, plus EOS."""

    def __init__(self, vocab: Any, text_key: str = "text"):
        self.vocab = vocab
        self.text_key = text_key

    def map(self, record: Any) -> np.ndarray:
        return tokenize(record_text(record, self.text_key), self.vocab)


class CausalLMChunks(grain.experimental.FlatMapTransform):
    """grain flat map: token ids of one document -> one causal-LM example per chunk."""

    # Used by grain only for MapDataset.flat_map; the pipeline flat-maps an IterDataset, where
    # any number of chunks per document is fine.
    max_fan_out = 1 << 20

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def flat_map(self, ids: np.ndarray) -> list[dict[str, np.ndarray]]:
        return causal_lm_examples(ids, self.seq_len)
