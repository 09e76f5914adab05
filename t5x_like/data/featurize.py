"""Labelled examples (`labelled.py`) as encoder-only rows of length L for classification and
BIO tagging; extractive QA is in `qa_features.py`.

Every row has `inputs` ([CLS] a [SEP] (b [SEP]), padded with 0), `token_type_ids` (0 for a,
1 for b), `segment_ids` (1 on real tokens, 0 on padding) and `positions` (0.. on real tokens,
0 on padding), all int32 [L]. Classification adds `label` [1] int32 and `weights` [1] float32;
tagging adds `targets` [L] (tag ids) and `weights` [L] (1.0 on each word's first piece, 0 on
its other pieces, on [CLS]/[SEP] and on padding). The [CLS]/[SEP]/pad ids come from the
tokenizer (`SpecialIds.from_vocab`: our vocabulary's extra ids, or a BERT tokenizer's own);
`encode` is any text -> token ids function (the tokenizer's `encode`). Each word is encoded
on its own, so a WordPiece word's "##" pieces follow its first piece, which carries the tag.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Encode = Callable[[str], Sequence[int]]
BASE_KEYS = ("inputs", "token_type_ids", "segment_ids", "positions")
CLASSIFICATION_KEYS = (*BASE_KEYS, "label", "weights")
TAGGING_KEYS = (*BASE_KEYS, "targets", "weights")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The vocabulary's special token ids the rows need."""

    cls: int
    sep: int
    pad: int = 0
    unk: int = 2

    @classmethod
    def from_vocab(cls, vocab: Any) -> "SpecialIds":
        """The ids of a tokenizer with `cls_id`, `sep_id`, `pad_id` and `unk_id`: our
        vocabulary's extra ids, or an HF tokenizer's own [CLS] / [SEP] (ValueError naming a
        missing one). A tokenizer without an unk token gives a word with no pieces the pad
        id (it still needs one token to carry its tag)."""
        unk = vocab.unk_id if vocab.unk_id is not None else vocab.pad_id
        return cls(cls=vocab.cls_id, sep=vocab.sep_id, pad=vocab.pad_id, unk=unk)


def encoder_row(
    a: Sequence[int], b: Sequence[int] | None, seq_len: int, special: SpecialIds
) -> dict[str, np.ndarray]:
    """`BASE_KEYS` of [CLS] a [SEP] (b [SEP]), padded to `seq_len` (which must hold them)."""
    tokens = [special.cls, *a, special.sep]
    types = [0] * len(tokens)
    if b is not None:
        tokens += [*b, special.sep]
        types += [1] * (len(b) + 1)
    n = len(tokens)
    if n > seq_len:
        raise ValueError(f"A row of {n} tokens does not fit data.seq_len={seq_len}.")
    pad = seq_len - n
    return {
        "inputs": np.array(tokens + [special.pad] * pad, np.int32),
        "token_type_ids": np.array(types + [0] * pad, np.int32),
        "segment_ids": np.array([1] * n + [0] * pad, np.int32),
        "positions": np.array(list(range(n)) + [0] * pad, np.int32),
    }


def truncate_pair(
    a: Sequence[int], b: Sequence[int] | None, budget: int
) -> tuple[list[int], list[int] | None]:
    """Drops tokens from the end of the longer side, one at a time, until both fit `budget`;
    once they are as long, from the side that was the shorter first (Hugging Face tokenizers'
    "longest_first": the longer side keeps the odd token)."""
    a = list(a)
    b = None if b is None else list(b)
    b_on_ties = b is not None and len(b) < len(a)
    while len(a) + (len(b) if b is not None else 0) > budget:
        if b is not None and (len(b) > len(a) or (len(b) == len(a) and b_on_ties)):
            b.pop()
        else:
            a.pop()
    return a, b


def classification_row(
    example: Mapping[str, Any],
    encode: Encode,
    special: SpecialIds,
    seq_len: int,
    label_ids: Mapping[str, int] | None,
) -> dict[str, np.ndarray]:
    """The row of a classification example (single sentence or pair), truncated to fit.
    `label_ids` maps its label to an id (None: the label is an id already)."""
    a = list(encode(example["text"]))
    b = None if example.get("text_b") is None else list(encode(example["text_b"]))
    specials = 2 if b is None else 3
    if seq_len < specials + 1 + (b is not None):
        raise ValueError(f"data.seq_len={seq_len} is too short for [CLS] a [SEP] (b [SEP]).")
    a, b = truncate_pair(a, b, seq_len - specials)
    row = encoder_row(a, b, seq_len, special)
    label = example["label"] if label_ids is None else label_ids[example["label"]]
    row["label"] = np.array([label], np.int32)
    row["weights"] = np.ones([1], np.float32)
    return row


def word_pieces(words: Sequence[str], encode: Encode, unk: int) -> list[list[int]]:
    """Each word's pieces, encoded on its own; a word with no pieces becomes [unk], so that
    every word keeps a first piece to carry its tag."""
    return [list(encode(word)) or [unk] for word in words]


def tagging_row(
    example: Mapping[str, Any],
    encode: Encode,
    special: SpecialIds,
    seq_len: int,
    tag_ids: Mapping[str, int] | None,
) -> dict[str, np.ndarray]:
    """The row of a tagging example: each word's first piece carries its tag (weight 1), its
    other pieces tag 0 with weight 0. Words that do not fit `seq_len` - 2 are dropped.
    `tag_ids` maps tags to ids (None: the tags are ids already)."""
    pieces = word_pieces(example["tokens"], encode, special.unk)
    budget = seq_len - 2
    tokens: list[int] = []
    targets: list[int] = []
    weights: list[float] = []
    for word, tag in zip(pieces, example["tags"], strict=True):
        if len(tokens) + len(word) > budget:
            break
        tokens += word
        targets += [tag if tag_ids is None else tag_ids[tag]] + [0] * (len(word) - 1)
        weights += [1.0] + [0.0] * (len(word) - 1)
    row = encoder_row(tokens, None, seq_len, special)
    pad = seq_len - len(tokens) - 2
    row["targets"] = np.array([0, *targets, 0] + [0] * pad, np.int32)
    row["weights"] = np.array([0.0, *weights, 0.0] + [0.0] * pad, np.float32)
    return row


def word_predictions(row_weights: np.ndarray, predicted_ids: np.ndarray) -> list[int]:
    """The predicted tag id of each (kept) word of a tagging row: its first piece's prediction."""
    return [int(p) for p, w in zip(predicted_ids, row_weights, strict=True) if w > 0]
