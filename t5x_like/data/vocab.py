"""SentencePiece vocabularies with T5's conventions, loaded from a file or trained and cached.

Ids: pad 0, eos 1, unk 2, no bos (T5's convention; the pad id doubles as the causal LM's
start token). `extra_ids` sentinel ids are appended after the SentencePiece pieces, T5-style:
sentinel i has id `vocab_size - 1 - i`; the encoder-only rows take the first three as [CLS],
[SEP] and [MASK]. Like T5's vocabulary, the default normalisation
(nmt_nfkc) folds runs of whitespace, newlines included, into one space.
"""

import io
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import sentencepiece as spm
from absl import logging
from etils import epath

from t5x_like.data import text_files, tokenizers
from t5x_like.errors import ConfigError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

# The encoder-only (BERT) special tokens: extra ids 0, 1, 2 (`cls_id`, `sep_id`, `mask_id`), so
# a vocabulary's pieces and ids stay as the other tasks (and cached vocabularies) have them.
ENCODER_SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[MASK]")
# Enough text for a few-thousand-piece vocabulary while keeping training to seconds.
DEFAULT_MAX_TRAIN_CHARS = 5_000_000
_SENTINEL_PATTERN = re.compile(r"<extra_id_(\d+)>")
# SentencePiece skips longer training sentences, so documents are fed line by line.
_MAX_SENTENCE_CHARS = 4000
# How to fix a bad model file; model paths come from the config's data.vocab_path.
_PATH_HINT = (
    "set data.vocab_path to a SentencePiece .model file (trained with pad_id=0 eos_id=1 "
    "unk_id=2 bos_id=-1), or leave it unset (None) to train one on the dataset"
)


class SentencePieceVocab:
    """A SentencePiece model plus `extra_ids` T5 sentinel ids after its pieces."""

    def __init__(self, model_proto: bytes, *, extra_ids: int = 0, path: str | None = None):
        """Wraps a serialized SentencePiece model; `path` is only used in messages."""
        if extra_ids < 0:
            raise ValueError(f"extra_ids must be >= 0, got {extra_ids}.")
        self._proto = model_proto
        self.path = path
        self.extra_ids = extra_ids
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except RuntimeError as e:
            raise ValueError(
                f"Not a valid SentencePiece model: {path or '<bytes>'} ({e}); {_PATH_HINT}."
            ) from e
        expected = (PAD_ID, EOS_ID, UNK_ID, -1)
        got = (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id(), self._sp.bos_id())
        if got != expected:
            raise ValueError(
                f"SentencePiece model {path or '<bytes>'} has (pad, eos, unk, bos) ids {got}; "
                f"t5x_like needs {expected} (train with pad_id=0 eos_id=1 unk_id=2 bos_id=-1)."
            )

    @classmethod
    def load(cls, path: str, *, extra_ids: int = 0) -> "SentencePieceVocab":
        """Loads a `.model` file (any path epath can read, e.g. local or gs://)."""
        model_path = epath.Path(path)
        if not model_path.exists():
            raise FileNotFoundError(f"SentencePiece model not found: {path}; {_PATH_HINT}.")
        if model_path.is_dir():  # FileNotFoundError: what the scripts report as bad input.
            raise FileNotFoundError(
                f"SentencePiece model path {path} is a directory, not a .model file; {_PATH_HINT}."
            )
        return cls(model_path.read_bytes(), extra_ids=extra_ids, path=str(path))

    # Pickled as the model bytes, so grain worker processes can receive the vocabulary.
    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self._proto, "extra_ids": self.extra_ids, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"], extra_ids=state["extra_ids"], path=state["path"])

    @property
    def sp_vocab_size(self) -> int:
        """Pieces in the SentencePiece model, without the extra ids."""
        return self._sp.get_piece_size()

    @property
    def vocab_size(self) -> int:
        """All ids: SentencePiece pieces plus extra ids."""
        return self.sp_vocab_size + self.extra_ids

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> None:
        """No BOS (T5's convention): decoder-only prompts start with the pad id."""
        return None

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation (t5x_like.data.tokenizers.Tokenizer)."""
        return (EOS_ID,)

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` (sentinels as <extra_id_j>)."""
        if self.sp_vocab_size <= i < self.vocab_size:
            return f"<extra_id_{self.vocab_size - 1 - i}>"
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"Id {i} is outside the vocabulary's {self.vocab_size} ids.")
        return self._sp.id_to_piece(int(i))

    def _encoder_special(self, index: int) -> int:
        if self.extra_ids < len(ENCODER_SPECIAL_TOKENS):
            raise ValueError(
                f"data.extra_ids={self.extra_ids}: the encoder-only rows' "
                f"{', '.join(ENCODER_SPECIAL_TOKENS)} are the vocabulary's first "
                f"{len(ENCODER_SPECIAL_TOKENS)} extra ids; set data.extra_ids >= "
                f"{len(ENCODER_SPECIAL_TOKENS)}."
            )
        return self.extra_id(index)

    @property
    def cls_id(self) -> int:
        """[CLS] (encoder-only rows): extra id 0, the top id."""
        return self._encoder_special(0)

    @property
    def sep_id(self) -> int:
        """[SEP] (encoder-only rows): extra id 1."""
        return self._encoder_special(1)

    @property
    def mask_id(self) -> int:
        """[MASK] (masked-LM inputs): extra id 2."""
        return self._encoder_special(2)

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._proto

    def extra_id(self, i: int) -> int:
        """The id of sentinel `i` (T5's `<extra_id_i>`): counted down from the top id."""
        if not 0 <= i < self.extra_ids:
            raise ValueError(f"Sentinel {i} out of range: this vocab has {self.extra_ids}.")
        return self.vocab_size - 1 - i

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without EOS."""
        return self._sp.encode(text, out_type=int)

    def encode_with_sentinels(self, text: str) -> list[int]:
        """Like `encode`, but `<extra_id_i>` in the text becomes sentinel i's id (prompts
        written T5-style, e.g. "The list <extra_id_0> is mutable."). A vocabulary without
        extra ids reads such text literally."""
        if not self.extra_ids:
            return self.encode(text)
        ids: list[int] = []
        for i, part in enumerate(_SENTINEL_PATTERN.split(text)):
            if i % 2:  # The captured sentinel number.
                ids.append(self.extra_id(int(part)))
            elif part:
                ids.extend(self.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first EOS; pads are skipped, sentinels print as <extra_id_i>.

        Ids outside the vocabulary (a model's padded vocab can sample them) decode as unk.
        """
        pieces: list[str] = []
        run: list[int] = []  # Consecutive SentencePiece ids, decoded together.
        after_sentinel = False

        def flush() -> None:
            text = self._sp.decode(run)
            # SentencePiece drops a run's leading word boundary; after a sentinel it is real
            # text ("water<extra_id_0> was"), as T5's tokenizer renders it.
            if after_sentinel and run and self._sp.id_to_piece(run[0]).startswith("\u2581"):
                text = " " + text
            pieces.append(text)

        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i == PAD_ID:
                continue
            if self.sp_vocab_size <= i < self.vocab_size:
                flush()
                pieces.append(f"<extra_id_{self.vocab_size - 1 - i}>")
                run = []
                after_sentinel = True
            else:
                run.append(i if 0 <= i < self.sp_vocab_size else UNK_ID)
        flush()
        return "".join(pieces)


def load_tokenizer(path: str, *, extra_ids: int = 0) -> Any:
    """The tokenizer at `path` (t5x_like.data.tokenizers.Tokenizer): a Hugging Face model
    directory, `tokenizer.json` or non-T5 SentencePiece model (e.g. LLaMA's) as
    `tokenizers.open_model_tokenizer` opens it; else our own SentencePiece `.model`, with
    `extra_ids` sentinels.

    Raises:
      FileNotFoundError / ValueError: one line naming the missing or bad file, or extra_ids
        asked of a tokenizer without sentinels.
    """
    tokenizer = tokenizers.open_model_tokenizer(path, (PAD_ID, EOS_ID, UNK_ID, -1))
    if tokenizer is None:
        return SentencePieceVocab.load(path, extra_ids=extra_ids)
    if extra_ids:
        raise ValueError(
            f"data.extra_ids={extra_ids}: T5 sentinels exist only in our own SentencePiece "
            f"vocabularies, not in {tokenizer.path}; set data.extra_ids=0."
        )
    return tokenizer


def vocab_cache_path(data_dir: str, dataset_name: str, vocab_size: int, split: str) -> str:
    """Where a vocabulary trained on `dataset_name` is cached under `data_dir`."""
    suffix = "" if split == "train" else f"_{split}"
    # ':' (a TFDS version separator) is awkward in file names; '/' (config) nests directories.
    dataset_dir = dataset_name.replace(":", "_")
    if text_files.is_user_files(dataset_name):  # Cached under data_dir, not beside them.
        dataset_dir = os.path.join("files", os.path.abspath(os.path.expanduser(dataset_dir))[1:])
    return os.path.join(data_dir, dataset_dir, "vocab", f"spm_{vocab_size}{suffix}.model")


def _training_sentences(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Non-empty lines of `texts`, in order, until `max_chars` characters have been yielded."""
    total = 0
    for text in texts:
        for line in text.splitlines():
            line = line.strip()[:_MAX_SENTENCE_CHARS]
            if not line:
                continue
            yield line
            total += len(line)
            if total >= max_chars:
                return


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, max_chars: int) -> bytes:
    """Trains a unigram SentencePiece model (T5 ids) on `texts`; returns the model bytes.

    Deterministic: the sentences are the texts' lines in order (no sampling, no shuffling) and
    training runs on one thread, since the result depends on the thread count.
    """
    sentences = list(_training_sentences(texts, max_chars))
    if not sentences:
        raise ValueError("No text to train a SentencePiece model on.")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            character_coverage=0.9995,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=4 * _MAX_SENTENCE_CHARS,  # In bytes.
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _training_error(e, vocab_size, sentences) from e
    return model.getvalue()


def _training_error(error: RuntimeError, vocab_size: int, sentences: list[str]) -> ConfigError:
    """SentencePiece's training error as one line naming data.vocab_size and its bound."""
    text = f"{len(sentences)} lines ({sum(len(s) for s in sentences)} characters)"
    # SentencePiece prefixes its message with its source location: keep the message alone.
    detail = re.sub(r"^\w+: \S+\(\d+\) \[[^\]]*\] ", "", str(error).strip())
    bound = re.search(r"value <= (\d+)", detail)
    what = f"Cannot train a {vocab_size}-piece SentencePiece model on {text}"
    if bound:
        return ConfigError(
            f"{what}: data.vocab_size={vocab_size} is more pieces than that text can make; set "
            f"data.vocab_size <= {bound.group(1)}, or train the vocabulary on more text "
            "(data.vocab_dataset)."
        )
    return ConfigError(
        f"{what} ({detail}): change data.vocab_size, or the text it trains on (data.vocab_dataset)."
    )


def _atomic_write(path: str, data: bytes) -> None:
    # Write a temp file in the same directory and rename it over the target: readers see either
    # no file or a complete one, even when runs race or are killed mid-write.
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".model")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_or_train_vocab(
    model_path: str | None,
    *,
    data_dir: str | None,
    dataset_name: str,
    split: str = "train",
    vocab_size: int,
    extra_ids: int = 0,
    max_train_chars: int = DEFAULT_MAX_TRAIN_CHARS,
    text_key: str = "text",
) -> SentencePieceVocab:
    """Loads `model_path`, or trains a vocabulary on a dataset split and caches it.

    Without `model_path`, the model is cached at `vocab_cache_path(...)` under the dataset's
    data dir and reused by later calls with the same dataset, split and vocab_size (delete the
    file to retrain, e.g. after changing `max_train_chars`).

    Args:
      model_path: a SentencePiece `.model` file, or None to train/reuse the cached one.
      data_dir: TFDS data dir (None: TFDS's default).
      dataset_name: TFDS dataset to train on (see `sources.prepare_dataset`).
      split: split whose text trains the model.
      vocab_size: SentencePiece pieces (the vocab has `vocab_size + extra_ids` ids).
      extra_ids: T5 sentinel ids appended after the pieces.
      max_train_chars: at most this many characters, read in the split's order, are used.
      text_key: the dataset's text feature.

    Raises:
      FileNotFoundError / ValueError: `model_path` is missing or not a SentencePiece model;
        or `vocab_size` does not suit the text (too large or too small).
    """
    if model_path:
        # Ours, or a Hugging Face model's tokenizer (tokenizer.json, a LLaMA tokenizer.model or
        # a model directory, as a converted checkpoint's workdir carries).
        try:
            return load_tokenizer(model_path, extra_ids=extra_ids)
        except (FileNotFoundError, ValueError) as e:
            if "data.vocab_path" in str(e):
                raise
            raise type(e)(
                f"data.vocab_path={model_path!r}: {e} Or set data.vocab_path to a SentencePiece "
                ".model, a tokenizer.json or a model directory holding one."
            ) from e

    # Imported here: loading a given model needs no TFDS.
    from t5x_like.data import sources

    data_dir = sources.resolve_data_dir(data_dir)
    cache = vocab_cache_path(data_dir, dataset_name, vocab_size, split)
    if os.path.exists(cache):
        return SentencePieceVocab.load(cache, extra_ids=extra_ids)

    source = sources.prepare_dataset(dataset_name, data_dir)[split]
    texts = (sources.vocab_texts(source[i], text_key) for i in range(len(source)))
    start = time.perf_counter()
    proto = train_sentencepiece(texts, vocab_size=vocab_size, max_chars=max_train_chars)
    logging.info(
        "Trained a %d-piece SentencePiece model on %s[%s] in %.1f s; cached at %s",
        vocab_size,
        dataset_name,
        split,
        time.perf_counter() - start,
        cache,
    )
    _atomic_write(cache, proto)
    return SentencePieceVocab(proto, extra_ids=extra_ids, path=cache)
