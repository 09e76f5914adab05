"""Extractive QA examples (`labelled.py`) as encoder-only windows, BERT's SQuAD recipe.

The context is split at whitespace into words (each keeps its character span) and each word
is encoded on its own, so every token knows the characters of the word it came from, or, with
`encode_offsets` (an HF tokenizer's `encode_with_offsets`), its own characters: a WordPiece
answer then starts and ends at a piece ("France" out of "France."), as in transformers' QA
recipe; without it, at whole words (BERT's original recipe). A row is
[CLS] question [SEP] context-window [SEP], the question cut to `max_query_len` tokens; a long
context becomes several windows, each starting `doc_stride` tokens after the previous one.
Rows carry `featurize.BASE_KEYS` plus `start_positions` / `end_positions` [1] int32 (the
answer's first and last token in the row; 0, i.e. [CLS], when the answer is not wholly in this
window or the example has none) and `weights` [1] float32. The host keeps a `QAWindow` per row
for post-processing (`evaluation.task_metrics.qa_predictions`).
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from t5x_like.data.featurize import Encode, SpecialIds, encoder_row, word_pieces

# text -> (token ids, each token's character span [start, end) in the text).
EncodeOffsets = Callable[[str], tuple[Sequence[int], Sequence[tuple[int, int]]]]

QA_KEYS = (
    "inputs",
    "token_type_ids",
    "segment_ids",
    "positions",
    "start_positions",
    "end_positions",
    "weights",
)


@dataclasses.dataclass(frozen=True)
class QAWindow:
    """Host-side metadata of one row.

    Attributes:
      example_id: the example's id.
      window: this window's index among the example's windows.
      offsets: [L, 2] int32, the context character span [start, end) of each context token
        (of the word it belongs to, without `encode_offsets`); (-1, -1) on [CLS], the
        question, [SEP] and padding.
      max_context: [L] bool, True on the context tokens whose context is widest in this window
        (a token in several windows is scored in one only).
    """

    example_id: str
    window: int
    offsets: np.ndarray
    max_context: np.ndarray


def split_words(text: str) -> list[tuple[str, int, int]]:
    """The whitespace-separated words of `text` with their character spans [start, end)."""
    words = []
    start = None
    for i, ch in enumerate(text):
        if ch.isspace():
            if start is not None:
                words.append((text[start:i], start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        words.append((text[start:], start, len(text)))
    return words


def window_starts(num_tokens: int, window_len: int, stride: int) -> list[int]:
    """First context token of each window: every `stride` tokens until one reaches the end."""
    starts = [0]
    while starts[-1] + window_len < num_tokens:
        starts.append(starts[-1] + stride)
    return starts


def _max_context(starts: list[int], window_len: int, num_tokens: int) -> list[np.ndarray]:
    """For each window, which of its tokens have their widest context there (BERT's score:
    min(tokens left, tokens right) + 0.01 * window length; the first best window wins)."""
    best_window = np.zeros(num_tokens, np.int64)
    best_score = np.full(num_tokens, -np.inf)
    for w, start in enumerate(starts):
        length = min(window_len, num_tokens - start)
        for t in range(start, start + length):
            score = min(t - start, start + length - 1 - t) + 0.01 * length
            if score > best_score[t]:
                best_score[t], best_window[t] = score, w
    return [best_window == w for w in range(len(starts))]


def qa_windows(
    example: Mapping[str, Any],
    encode: Encode,
    special: SpecialIds,
    seq_len: int,
    *,
    doc_stride: int = 32,
    max_query_len: int = 64,
    encode_offsets: EncodeOffsets | None = None,
) -> list[tuple[dict[str, np.ndarray], QAWindow]]:
    """The rows (and their metadata) of one QA example; its first answer is the target (the
    tokens overlapping its characters).

    Raises:
      ValueError: `seq_len` leaves no room for the context after the question, or
        `doc_stride` is not in [1, window length].
    """
    question = list(encode(example["question"]))[:max_query_len]
    window_len = seq_len - len(question) - 3
    if window_len < 1:
        raise ValueError(
            f"data.seq_len={seq_len} leaves no room for the context after a {len(question)}-"
            "token question; raise data.seq_len or lower data.max_query_len."
        )
    if not 1 <= doc_stride <= window_len:
        raise ValueError(
            f"data.doc_stride={doc_stride} must be in [1, {window_len}] (the context tokens a "
            f"window holds with data.seq_len={seq_len}), or windows would skip context."
        )
    tokens, token_spans = _context_tokens(example["context"], encode, special, encode_offsets)

    span = None
    if example["answers"]:
        answer = example["answers"][0]
        a_start, a_end = answer["start"], answer["start"] + len(answer["text"])
        # Tokens overlapping the answer's characters (an answer may start mid-word).
        hit = [t for t, (s, e) in enumerate(token_spans) if s < a_end and e > a_start]
        if hit:
            span = (hit[0], hit[-1])

    starts = window_starts(len(tokens), window_len, doc_stride)
    max_context = _max_context(starts, window_len, len(tokens))
    offset = len(question) + 2  # [CLS] question [SEP]
    out = []
    for w, start in enumerate(starts):
        end = min(start + window_len, len(tokens))
        row = encoder_row(question, tokens[start:end], seq_len, special)
        s = e = 0
        if span is not None and start <= span[0] and span[1] < end:
            s, e = span[0] - start + offset, span[1] - start + offset
        row["start_positions"] = np.array([s], np.int32)
        row["end_positions"] = np.array([e], np.int32)
        row["weights"] = np.ones([1], np.float32)
        offsets = np.full([seq_len, 2], -1, np.int32)
        in_max = np.zeros([seq_len], bool)
        for t in range(start, end):
            offsets[t - start + offset] = token_spans[t]
            in_max[t - start + offset] = max_context[w][t]
        out.append((row, QAWindow(str(example["id"]), w, offsets, in_max)))
    return out


def _context_tokens(
    context: str, encode: Encode, special: SpecialIds, encode_offsets: EncodeOffsets | None
) -> tuple[list[int], list[tuple[int, int]]]:
    """The context's tokens, word by word, and each token's character span in the context:
    its own with `encode_offsets`, else its word's."""
    words = split_words(context)
    if encode_offsets is None:
        pieces = word_pieces([w for w, _, _ in words], encode, special.unk)
        spans = [[(s, e)] * len(p) for p, (_, s, e) in zip(pieces, words, strict=True)]
    else:
        pieces, spans = [], []
        for word, s, e in words:
            ids, offsets = encode_offsets(word)
            if not len(ids):  # No pieces: one unk carries the word, as `word_pieces` does.
                ids, offsets = [special.unk], [(0, e - s)]
            pieces.append(list(ids))
            spans.append([(s + a, s + b) for a, b in offsets])
    tokens = [t for word in pieces for t in word]
    return tokens, [span for word in spans for span in word]


def qa_dataset(
    examples: Sequence[Mapping[str, Any]],
    encode: Encode,
    special: SpecialIds,
    seq_len: int,
    *,
    doc_stride: int = 32,
    max_query_len: int = 64,
    encode_offsets: EncodeOffsets | None = None,
) -> tuple[dict[str, np.ndarray], list[QAWindow]]:
    """All windows of `examples`, stacked: features [num_windows, ...] and their metadata."""
    rows, windows = [], []
    for example in examples:
        for row, window in qa_windows(
            example,
            encode,
            special,
            seq_len,
            doc_stride=doc_stride,
            max_query_len=max_query_len,
            encode_offsets=encode_offsets,
        ):
            rows.append(row)
            windows.append(window)
    return {k: np.stack([r[k] for r in rows]) for k in QA_KEYS}, windows


def references(
    examples: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """What QA evaluation needs of the examples: id -> context (`task_metrics.qa_predictions`)
    and id -> gold answer texts (`task_metrics.squad_metrics`; [] when unanswerable)."""
    contexts = {str(e["id"]): e["context"] for e in examples}
    golds = {str(e["id"]): [a["text"] for a in e["answers"]] for e in examples}
    if len(contexts) != len(examples):
        raise ValueError("QA example ids must be unique: predictions are keyed by id.")
    return contexts, golds
