"""Masked-LM pretraining data (BERT): masking, optional sentence pairs, encoder-only rows.

    ids of one document -> chunks -> [CLS] chunk [SEP]                  (data.sentence_pair=none)
                                  or [CLS] a [SEP] b [SEP] + nsp_label  (nsp / sop)
                        -> masked: data.mlm_probability of the non-special tokens selected
                           (whole words with data.whole_word_masking), each replaced by [MASK]
                           80%, a random piece 10%, kept 10%
                        -> rows of data.seq_len: packed (segment ids 1..k, positions restarting
                           per example, so attention never crosses examples) or padded alone;
                           sentence pairs are one per row (one nsp_label per row).

Row features (`ROW_KEYS`, each [L]): `inputs`, `token_type_ids` (0 for [CLS] a [SEP], 1 for
b [SEP]), `segment_ids` (0 = padding), `positions`, `targets` (the original tokens) and `weights`
(1.0 at the selected positions); with sentence pairs `nsp_label` [1] (0: b follows a / is in
order, 1: b is from another document / the two are swapped), as in transformers' BERT.

NSP's "other document" is the one `PARTNER_SPAN` records or fewer further along the (shuffled,
repeated) record stream; a one-record split pairs a document with itself. Every draw comes from
`preprocessors.chunk_rng(document seed, chunk index)`: rows depend only on the pipeline seed and
the records, whatever the threads or workers.
"""

import dataclasses
import functools
import sys
from typing import Any

import grain
import numpy as np

from t5x_like.data import preprocessors

ROW_KEYS = ("inputs", "token_type_ids", "segment_ids", "positions", "targets", "weights")
PAIR_KEY = "nsp_label"
SENTENCE_PAIRS = ("none", "nsp", "sop")
# The features an example carries into the packer (segment ids and positions come from it).
_EXAMPLE_KEYS = ("inputs", "token_type_ids", "targets", "weights")
# NSP negatives come from a document at most this many records away in the stream.
PARTNER_SPAN = 97
# BERT's replacement split of the selected tokens: [MASK], a random piece, unchanged.
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1
_SENTENCE_END = (".", "?", "!", ":", ";")


@dataclasses.dataclass(frozen=True)
class MlmVocab:
    """What masking needs of a vocabulary.

    Attributes:
      cls_id, sep_id, mask_id: the special tokens (our vocabularies' first extra ids; an HF
        tokenizer's own [CLS] / [SEP] / [MASK]).
      random_ids: (low, high): random replacements are drawn from [low, high) (the
        SentencePiece pieces after pad/eos/unk; never a special token).
      word_start: bool per id: the piece starts a word (SentencePiece's "▁"; WordPiece's
        pieces without "##").
      sentence_end: bool per id: the piece ends a sentence (a split point for sentence pairs).
    """

    cls_id: int
    sep_id: int
    mask_id: int
    random_ids: tuple[int, int]
    word_start: np.ndarray
    sentence_end: np.ndarray

    @classmethod
    def from_vocab(cls, vocab: Any) -> "MlmVocab":
        """From our `vocab.SentencePieceVocab` (ValueError if it lacks the 3 extra ids) or an
        HF tokenizer (`tokenizers.HFTokenizer`, e.g. a BERT WordPiece one) with [CLS], [SEP] and
        [MASK] tokens (ValueError naming the missing one)."""
        if not hasattr(vocab, "sp_vocab_size"):
            return cls._from_hf_tokenizer(vocab)
        n = vocab.sp_vocab_size
        pieces = [vocab.id_to_piece(i) for i in range(n)]
        extra = vocab.vocab_size - n
        word_start = np.array([p.startswith("\u2581") for p in pieces] + [True] * extra)
        sentence_end = np.array([p.endswith(_SENTENCE_END) for p in pieces] + [False] * extra)
        return cls(
            cls_id=vocab.cls_id,
            sep_id=vocab.sep_id,
            mask_id=vocab.mask_id,
            random_ids=(3, n),
            word_start=word_start,
            sentence_end=sentence_end,
        )

    @classmethod
    def _from_hf_tokenizer(cls, vocab: Any) -> "MlmVocab":
        """WordPiece marks a word's continuation ("##"); byte-level BPE and SentencePiece mark
        a word's start ("Ġ", "▁"). Random replacements skip the special tokens at either end
        of the vocabulary (BERT's [PAD]/[unused]/[UNK]/[CLS]/[SEP]/[MASK] at ids 0-103,
        RoBERTa's <s>/<pad>/</s>/<unk> at 0-3 and <mask> last)."""
        n = vocab.vocab_size
        pieces = [vocab.id_to_piece(i) for i in range(n)]
        if any(p.startswith("##") for p in pieces):
            word_start = np.array([not p.startswith("##") for p in pieces])
        else:
            word_start = np.array([p.startswith(("\u0120", "\u2581")) for p in pieces])
        sentence_end = np.array([p.endswith(_SENTENCE_END) for p in pieces])
        specials = {vocab.cls_id, vocab.sep_id, vocab.mask_id, vocab.pad_id}
        specials |= {i for i in (vocab.unk_id, getattr(vocab, "bos_id", None)) if i is not None}
        low = 1 + max([i for i in specials if i < n // 2], default=-1)
        high = min([i for i in specials if i >= n // 2], default=n)
        if low >= high:
            raise ValueError(f"Tokenizer {vocab.path} leaves no ids for random replacements.")
        return cls(
            cls_id=vocab.cls_id,
            sep_id=vocab.sep_id,
            mask_id=vocab.mask_id,
            random_ids=(low, high),
            word_start=word_start,
            sentence_end=sentence_end,
        )


def _words(ids: np.ndarray, maskable: np.ndarray, word_start: np.ndarray) -> list[np.ndarray]:
    """Positions of the maskable tokens grouped into words: a word starts at a "▁" piece or
    after a special (unmaskable) token."""
    words: list[list[int]] = []
    previous = -2
    for i in np.flatnonzero(maskable):
        if not words or word_start[ids[i]] or previous != i - 1:
            words.append([])
        words[-1].append(int(i))
        previous = i
    return [np.asarray(w) for w in words]


def mask_tokens(
    ids: np.ndarray,
    maskable: np.ndarray,
    rng: np.random.Generator,
    vocab: MlmVocab,
    *,
    rate: float,
    whole_word: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT's masking of one example: (inputs, targets, weights).

    round(rate * maskable tokens) of the `maskable` positions (at least 1) are selected (with
    `whole_word`, whole words in random order, a word that would overshoot skipped, as BERT's
    create_pretraining_data does); each is replaced by [MASK] with probability 0.8, by a random
    piece with 0.1, and kept with 0.1. `targets` are the original ids, `weights` 1.0 at the
    selected positions.
    """
    ids = np.asarray(ids, np.int32)
    maskable = np.asarray(maskable, bool)
    count = int(maskable.sum())
    weights = np.zeros(len(ids), np.float32)
    if count:
        wanted = max(1, int(round(rate * count)))
        if whole_word:
            words = _words(ids, maskable, vocab.word_start)
            chosen = 0
            for w in rng.permutation(len(words)):
                if chosen + len(words[w]) > wanted:
                    continue
                weights[words[w]] = 1.0
                chosen += len(words[w])
                if chosen == wanted:
                    break
        else:
            weights[rng.permutation(np.flatnonzero(maskable))[:wanted]] = 1.0
    selected = np.flatnonzero(weights)
    draw = rng.random(len(selected))
    inputs = ids.copy()
    inputs[selected[draw < MASK_FRACTION]] = vocab.mask_id
    randomised = selected[(draw >= MASK_FRACTION) & (draw < MASK_FRACTION + RANDOM_FRACTION)]
    inputs[randomised] = rng.integers(*vocab.random_ids, size=len(randomised))
    return inputs, ids, weights


def _masked_example(
    tokens: list[int],
    types: list[int],
    rng: np.random.Generator,
    vocab: MlmVocab,
    rate: float,
    whole_word: bool,
) -> dict[str, np.ndarray]:
    ids = np.asarray(tokens, np.int32)
    special = (ids == vocab.cls_id) | (ids == vocab.sep_id)
    inputs, targets, weights = mask_tokens(
        ids, ~special, rng, vocab, rate=rate, whole_word=whole_word
    )
    return {
        "inputs": inputs,
        "token_type_ids": np.asarray(types, np.int32),
        "targets": targets,
        "weights": weights,
    }


def single_example(
    chunk: np.ndarray, rng: np.random.Generator, vocab: MlmVocab, rate: float, whole_word: bool
) -> dict[str, np.ndarray]:
    """[CLS] chunk [SEP], masked (token types all 0)."""
    tokens = [vocab.cls_id, *map(int, chunk), vocab.sep_id]
    return _masked_example(tokens, [0] * len(tokens), rng, vocab, rate, whole_word)


def _split_point(chunk: np.ndarray, rng: np.random.Generator, vocab: MlmVocab) -> int:
    """Where a chunk of >= 2 tokens splits into a and b: after a random sentence end if one
    leaves both sides non-empty, else at a random token."""
    ends = np.flatnonzero(vocab.sentence_end[chunk[:-1]]) + 1
    if len(ends):
        return int(rng.choice(ends))
    return int(rng.integers(1, len(chunk)))


def pair_example(
    chunk: np.ndarray,
    partner: np.ndarray,
    rng: np.random.Generator,
    vocab: MlmVocab,
    *,
    mode: str,
    rate: float,
    whole_word: bool,
) -> dict[str, np.ndarray]:
    """[CLS] a [SEP] b [SEP] from a chunk of >= 2 tokens, masked, with `nsp_label` [1].

    nsp: b is the rest of the chunk (label 0) or, with probability 1/2, as many tokens from a
    random place of `partner` (label 1). sop: a and b in order (0) or swapped (1).
    """
    split = _split_point(chunk, rng, vocab)
    a, b = chunk[:split], chunk[split:]
    label = int(rng.random() < 0.5)
    if label and mode == "nsp":
        n = min(len(b), len(partner))
        if n:
            start = int(rng.integers(0, len(partner) - n + 1))
            b = partner[start : start + n]
        else:  # An empty partner: keep the true continuation.
            label = 0
    elif label:  # sop
        a, b = b, a
    tokens = [vocab.cls_id, *map(int, a), vocab.sep_id, *map(int, b), vocab.sep_id]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    example = _masked_example(tokens, types, rng, vocab, rate, whole_word)
    example[PAIR_KEY] = np.asarray([label], np.int32)
    return example


class MlmChunks(grain.experimental.FlatMapTransform):
    """grain flat map: {"ids", "seed"(, "partner")} of one document -> its masked examples.

    The document is cut into chunks of seq_len - 2 tokens (single) or seq_len - 3 (pairs),
    none dropped (a 1-token chunk cannot be a pair: with pairs it is skipped); chunk i draws
    from `chunk_rng(seed, i)`.
    """

    # Used by grain only for MapDataset.flat_map; the pipeline flat-maps an IterDataset.
    max_fan_out = 1 << 20

    def __init__(self, vocab: MlmVocab, task: Any):
        self.vocab = vocab
        self.mode = task.sentence_pair
        self.rate = task.mlm_probability
        self.whole_word = task.whole_word_masking
        self.chunk_length = task.seq_len - (2 if self.mode == "none" else 3)

    def flat_map(self, element: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        out = []
        chunks = preprocessors.split_into_chunks(element["ids"], self.chunk_length)
        for i, chunk in enumerate(chunks):
            rng = preprocessors.chunk_rng(element["seed"], i)
            if self.mode == "none":
                out.append(single_example(chunk, rng, self.vocab, self.rate, self.whole_word))
            elif len(chunk) >= 2:
                out.append(
                    pair_example(
                        chunk,
                        element["partner"],
                        rng,
                        self.vocab,
                        mode=self.mode,
                        rate=self.rate,
                        whole_word=self.whole_word,
                    )
                )
        return out


class _AddPartner(grain.transforms.MapWithIndex):
    """{"ids", "seed"} at stream index i -> plus "partner": the ids of a document 1 to
    PARTNER_SPAN records further along (wrapping around a finite stream)."""

    def __init__(self, documents: grain.MapDataset):
        self.documents = documents

    def map_with_index(self, index: int, element: dict[str, Any]) -> dict[str, Any]:
        n = len(self.documents)
        offset = 1 + element["seed"] % PARTNER_SPAN
        other = index + offset if n == sys.maxsize else (index + offset) % n
        return {**element, "partner": self.documents[other]["ids"]}


def examples(
    docs: grain.MapDataset, vocab: Any, task: Any, seed: int, read_options: Any
) -> grain.IterDataset:
    """Records (a MapDataset, shuffled and repeated as the pipeline wants) -> masked examples."""
    tokens = docs.map(preprocessors.TokenizeText(vocab, task.text_key, add_eos=False))
    tokens = tokens.random_map(preprocessors.SeedDocument(), seed=seed)
    if task.sentence_pair != "none":
        tokens = tokens.map_with_index(_AddPartner(tokens))
    chunks = MlmChunks(MlmVocab.from_vocab(vocab), task)
    return grain.experimental.FlatMapIterDataset(tokens.to_iter_dataset(read_options), chunks)


# -- rows --------------------------------------------------------------------------------------


def row_features(seq_len: int, sentence_pair: str) -> dict[str, int]:
    """Row key -> length of the masked-LM rows."""
    features = dict.fromkeys(ROW_KEYS, seq_len)
    if sentence_pair != "none":
        features[PAIR_KEY] = 1
    return features


def _check(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    n = len(example["inputs"])
    if n > seq_len:
        raise ValueError(f"A masked-LM example of {n} tokens does not fit data.seq_len={seq_len}.")
    return example


def pad_example(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example alone in a row of `seq_len`: segment id 1 on its tokens."""
    n = len(_check(example, seq_len)["inputs"])
    real = np.arange(seq_len) < n
    row = {k: np.pad(example[k], (0, seq_len - n)) for k in _EXAMPLE_KEYS}
    row["segment_ids"] = real.astype(np.int32)
    row["positions"] = np.where(real, np.arange(seq_len), 0).astype(np.int32)
    if PAIR_KEY in example:
        row[PAIR_KEY] = example[PAIR_KEY]
    return row


def _from_grain_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: row[k] for k in _EXAMPLE_KEYS}
    out["segment_ids"] = row["inputs_segment_ids"].astype(np.int32)
    out["positions"] = row["inputs_positions"].astype(np.int32)
    return out


def _packable(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    return {k: _check(example, seq_len)[k] for k in _EXAMPLE_KEYS}


def to_rows(
    ds: grain.IterDataset,
    seq_len: int,
    sentence_pair: str,
    *,
    pack_examples: bool,
    num_packing_bins: int,
    shuffle_bins: bool = False,
    seed: int = 0,
) -> grain.IterDataset:
    """Masked examples -> rows of `seq_len`. Single-sequence examples are packed (first fit,
    as packing.pack) when `pack_examples`; sentence pairs are always one per row."""
    if sentence_pair != "none" or not pack_examples:
        return ds.map(functools.partial(pad_example, seq_len=seq_len))
    packed = grain.experimental.FirstFitPackIterDataset(
        ds.map(functools.partial(_packable, seq_len=seq_len)),
        length_struct=dict.fromkeys(_EXAMPLE_KEYS, seq_len),
        num_packing_bins=num_packing_bins,
        shuffle_bins=shuffle_bins,
        seed=seed,
    )
    return packed.map(_from_grain_packed)


def features_from_sides(sides: dict[str, Any], sentence_pair: str) -> dict[str, np.ndarray]:
    """Rows from (tokens, segment_ids, positions) of the "encoder" side, rows [L] or batches
    [B, L] (synthetic benchmark batches): every real token a target, token types 0."""
    tokens, segment_ids, positions = (np.asarray(x, np.int32) for x in sides["encoder"])
    rows = {
        "inputs": tokens,
        "token_type_ids": np.zeros_like(tokens),
        "segment_ids": segment_ids,
        "positions": positions,
        "targets": tokens,
        "weights": (segment_ids > 0).astype(np.float32),
    }
    if sentence_pair != "none":
        rows[PAIR_KEY] = np.zeros(tokens.shape[:-1] + (1,), np.int32)
    return rows
