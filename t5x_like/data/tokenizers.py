"""One tokenizer interface over our SentencePiece vocabularies and Hugging Face tokenizers.

`Tokenizer` is what the pipeline, evaluation and inference read: `encode` / `decode`,
`vocab_size`, the special ids (`pad_id`, `eos_id`, `unk_id`, `bos_id`; `eos_ids` all ids that end
a generation) and `id_to_piece`; the HF-side ones also give the model's `chat_template` (None
without one). Three implementations:

- `t5x_like.data.vocab.SentencePieceVocab`: our own pretraining vocabularies (pad 0, eos 1,
  unk 2, no bos; T5 sentinels), unchanged;
- `HFTokenizer`: a `tokenizer.json` of the `tokenizers` library (byte-level BPE, WordPiece,
  Unigram, ...), as transformers' `PreTrainedTokenizerFast` reads it;
- `SentencePieceTokenizer`: any other SentencePiece `tokenizer.model`, e.g. LLaMA's (unk 0,
  bos 1, eos 2), with the ids the model file states.

The special ids of a model directory are read from its files, never assumed: tokenizer_config.json
and special_tokens_map.json name the tokens, generation_config.json and config.json give ids
(`eos_token_id` may be a list: generation stops at any of them). The encoder-only (BERT /
RoBERTa) rows read `cls_id`, `sep_id` and `mask_id` the same way (cls_token, sep_token,
mask_token; else [CLS]/<s>, [SEP]/</s>, [MASK]/<mask> where the vocabulary has them); a BERT
tokenizer, which has no EOS, ends a text at the [SEP] its files name; and
`HFTokenizer.encode_with_offsets` gives each token's characters (for extractive QA).
`open_model_tokenizer` picks
the HF-side implementation from a directory or file; `t5x_like.data.vocab.load_tokenizer` (what
`data.vocab_path` goes through) adds our own vocabularies.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

# The files of a model directory that state special tokens, in order of precedence: the
# tokenizer's own files name tokens, the model's configs give ids.
TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")
ID_FILES = ("generation_config.json", "config.json")
# Files a converted workdir copies next to its checkpoint (those present).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", *TOKEN_FILES, "generation_config.json")
_SPECIALS = ("bos", "eos", "pad", "unk")
# The encoder-only (BERT / RoBERTa) specials, named in the same files (`cls_token`, ...); where
# no file names one, transformers' class defaults are looked up in the vocabulary.
ENCODER_SPECIALS = ("cls", "sep", "mask")
_ENCODER_DEFAULT_TOKENS = {
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}


@runtime_checkable
class Tokenizer(Protocol):
    """What the code reads of a tokenizer. `bos_id` is None for vocabularies without one."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def unk_id(self) -> int | None: ...

    @property
    def bos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_with_sentinels(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def id_to_piece(self, i: int) -> str: ...


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    """A JSON object file, or {} when absent; ValueError naming the file when unreadable."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): fix or remove it.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(value).__name__}.")
    return value


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(int(v) for v in values if isinstance(v, int) and not isinstance(v, bool))


def special_ids(
    directory: str | os.PathLike | None,
    token_to_id: Any,
    defaults: dict[str, Any] | None = None,
    kinds: tuple[str, ...] = _SPECIALS,
) -> dict[str, tuple[int, ...]]:
    """{"bos"|"eos"|"pad"|"unk": ids} of a model directory (or those of `kinds`, e.g.
    `ENCODER_SPECIALS`); each from the first file that states it (token names via
    `token_to_id`, then ids), else `defaults[kind]`.

    Raises ValueError naming the file whose token is not in the vocabulary.
    """
    found: dict[str, tuple[int, ...]] = {}
    root = pathlib.Path(directory) if directory is not None else None
    for name in TOKEN_FILES if root else ():
        path = root / name
        data = _read_json(path)
        for kind in kinds:
            token = _token_content(data.get(f"{kind}_token"))
            if kind in found or token is None:
                continue
            token_id = token_to_id(token)
            if token_id is None:
                raise ValueError(
                    f"{path}: {kind}_token {token!r} is not in the tokenizer's vocabulary."
                )
            found[kind] = (int(token_id),)
    for name in ID_FILES if root else ():
        data = _read_json(root / name)
        for kind in kinds:
            ids = _as_ids(data.get(f"{kind}_token_id"))
            if not ids:
                continue
            if kind == "eos" and kind in found:
                # generation_config.json may list several EOS ids (Llama 3's <|eot_id|>): keep
                # the tokenizer's one first and add the others.
                found[kind] = tuple(dict.fromkeys(found[kind] + ids))
            elif kind not in found:
                found[kind] = ids
    for kind, value in (defaults or {}).items():
        if kind not in found and value is not None:
            found[kind] = _as_ids(value)
    return found


class _SpecialIds:
    """The special-id properties shared by the HF-directory tokenizers."""

    _ids: dict[str, tuple[int, ...]]
    path: str

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos"][0] if "bos" in self._ids else None

    @property
    def eos_id(self) -> int:
        return self._ids["eos"][0]

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation."""
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        """The pad token's id; without one, the EOS id (transformers' convention)."""
        return self._ids.get("pad", self._ids["eos"])[0]

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk"][0] if "unk" in self._ids else None

    def encode_with_sentinels(self, text: str) -> list[int]:
        """`encode`: only our own vocabularies have T5 sentinels."""
        return self.encode(text)

    @property
    def chat_template(self) -> str | None:
        """The model's chat template (a Jinja string), None without one: chat_template.jinja in
        its directory (where transformers >= 4.43 saves it), else tokenizer_config.json's
        `chat_template` (a string, or a list of {"name", "template"}: the "default" one)."""
        path = self._directory / "chat_template.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
        value = _read_json(self._directory / "tokenizer_config.json").get("chat_template")
        if isinstance(value, list):  # Named templates (e.g. "default", "tool_use").
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            value = named.get("default")
        return value if isinstance(value, str) and value.strip() else None

    # -- encoder-only specials ([CLS], [SEP], [MASK]) -----------------------------------------

    def _piece_id(self, piece: str) -> int | None:
        raise NotImplementedError

    def _encoder_ids(self) -> dict[str, int]:
        """{"cls"|"sep"|"mask": id} this tokenizer has: named by tokenizer_config.json /
        special_tokens_map.json (cls_token, sep_token, mask_token), else transformers' default
        tokens where the vocabulary holds them ([CLS] / <s>, [SEP] / </s>, [MASK] / <mask>)."""
        if getattr(self, "_encoder_cache", None) is None:
            found = special_ids(self._directory, self._piece_id, kinds=ENCODER_SPECIALS)
            ids = {kind: value[0] for kind, value in found.items()}
            for kind, tokens in _ENCODER_DEFAULT_TOKENS.items():
                if kind not in ids:
                    hits = [i for i in map(self._piece_id, tokens) if i is not None]
                    if hits:
                        ids[kind] = hits[0]
            self._encoder_cache = ids
        return self._encoder_cache

    def _encoder_special(self, kind: str) -> int:
        ids = self._encoder_ids()
        if kind not in ids:
            raise ValueError(
                f"Tokenizer {self.path} has no {kind} token, which encoder-only (BERT) rows "
                f"need: set {kind}_token in its tokenizer_config.json."
            )
        return ids[kind]

    @property
    def cls_id(self) -> int:
        """[CLS] (BERT) / <s> (RoBERTa): what encoder-only rows start with."""
        return self._encoder_special("cls")

    @property
    def sep_id(self) -> int:
        """[SEP] / </s>: what ends each segment of an encoder-only row."""
        return self._encoder_special("sep")

    @property
    def mask_id(self) -> int:
        """[MASK] / <mask>: the masked-LM input token."""
        return self._encoder_special("mask")

    @property
    def mask_token(self) -> str:
        """The [MASK] token's text (what a fill-mask prompt writes)."""
        return self.id_to_piece(self.mask_id)

    def _require_eos(self) -> None:
        if "eos" not in self._ids:
            # A BERT tokenizer has no EOS; the [SEP] its files name ends a text instead.
            sep = special_ids(self._directory, self._piece_id, kinds=("sep",))
            if sep:
                self._ids["eos"] = sep["sep"]
        if "eos" not in self._ids:
            raise ValueError(
                f"Tokenizer {self.path} has no EOS token: set eos_token in its "
                "tokenizer_config.json (or eos_token_id in generation_config.json)."
            )

    def _kept(self, ids: Iterable[int]) -> list[int]:
        """`ids` up to the first EOS, without pads (as `SentencePieceVocab.decode`)."""
        kept = []
        pad = self._ids.get("pad", ())
        for i in ids:
            i = int(i)
            if i in self.eos_ids:
                break
            if i not in pad and 0 <= i < self.vocab_size:
                kept.append(i)
        return kept


# transformers' clean_up_tokenization: spaces before punctuation and English contractions.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"))
_CLEANUP += ((" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class HFTokenizer(_SpecialIds):
    """A `tokenizer.json` (the `tokenizers` library) with the special ids of its directory.

    `encode` adds no special tokens (the model's code adds BOS/EOS where it wants them); `decode`
    stops at the first EOS and skips special tokens, like transformers' `decode(...,
    skip_special_tokens=True)` with the directory's `clean_up_tokenization_spaces`.
    """

    def __init__(
        self, tokenizer_file: str | os.PathLike, directory: str | os.PathLike | None = None
    ):
        import tokenizers

        path = pathlib.Path(tokenizer_file)
        self.path = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"Tokenizer file not found: {path}.")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # The library raises bare Exceptions for malformed files.
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path} is not a valid tokenizer.json ({first}).") from None
        self._directory = pathlib.Path(directory) if directory is not None else path.parent
        config = _read_json(self._directory / "tokenizer_config.json")
        self._cleanup = bool(config.get("clean_up_tokenization_spaces", False))
        self._ids = special_ids(self._directory, self._tok.token_to_id, _model_unk(self._tok))
        self._require_eos()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "directory": str(self._directory)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["directory"])

    def _piece_id(self, piece: str) -> int | None:
        return self._tok.token_to_id(piece)

    @property
    def vocab_size(self) -> int:
        """All ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode`'s ids and each token's character span [start, end) in `text` (what
        extractive QA maps answers with)."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, [tuple(o) for o in encoding.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        text = self._tok.decode(self._kept(ids), skip_special_tokens=True)
        if self._cleanup:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text

    def id_to_piece(self, i: int) -> str:
        piece = self._tok.id_to_token(int(i))
        if piece is None:
            raise ValueError(f"Id {i} is outside the tokenizer's {self.vocab_size} ids.")
        return piece


def _model_unk(tok: Any) -> dict[str, Any]:
    """The unk id the tokenizer.json model itself declares (BPE/WordPiece/Unigram)."""
    model = json.loads(tok.to_str()).get("model", {})
    unk = model.get("unk_token")
    if isinstance(unk, str):
        return {"unk": tok.token_to_id(unk)}
    if isinstance(model.get("unk_id"), int):  # Unigram
        return {"unk": model["unk_id"]}
    return {}


class SentencePieceTokenizer(_SpecialIds):
    """A SentencePiece `tokenizer.model` with its own special ids (e.g. LLaMA's unk 0, bos 1,
    eos 2), overridden by what its directory's files state."""

    def __init__(self, model_file: str | os.PathLike, directory: str | os.PathLike | None = None):
        import sentencepiece as spm

        path = pathlib.Path(model_file)
        self.path = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}.")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(path.read_bytes())
        except RuntimeError:
            raise ValueError(f"{path} is not a valid SentencePiece model.") from None
        self._directory = pathlib.Path(directory) if directory is not None else path.parent
        own = {"bos": self._sp.bos_id(), "eos": self._sp.eos_id(), "pad": self._sp.pad_id()}
        own["unk"] = self._sp.unk_id()
        defaults = {k: v for k, v in own.items() if v >= 0}
        self._ids = special_ids(self._directory, self._piece_id, defaults)
        self._require_eos()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "directory": str(self._directory)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["directory"])

    def _piece_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        # piece_to_id answers unknown pieces with the unk id.
        return i if self._sp.id_to_piece(i) == piece else None

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode(self._kept(ids))

    def id_to_piece(self, i: int) -> str:
        if not 0 <= int(i) < self.vocab_size:
            raise ValueError(f"Id {i} is outside the tokenizer's {self.vocab_size} ids.")
        return self._sp.id_to_piece(int(i))


def _sentencepiece_ids(model_file: pathlib.Path) -> tuple[int, int, int, int] | None:
    """(pad, eos, unk, bos) of a SentencePiece model; None if it does not load."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_file.read_bytes())
    except (RuntimeError, OSError):
        return None
    return (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id())


def open_model_tokenizer(
    path: str | os.PathLike, own_ids: tuple[int, int, int, int]
) -> HFTokenizer | SentencePieceTokenizer | None:
    """The HF-side tokenizer at `path`: a model directory (its tokenizer.json, else
    tokenizer.model), a `tokenizer.json`, or a SentencePiece `.model` whose (pad, eos, unk, bos)
    ids differ from `own_ids` (e.g. LLaMA's). None for a SentencePiece model with `own_ids`, or a
    `.model` path that does not load: those are our own vocabularies
    (`t5x_like.data.vocab.load_tokenizer` loads them, with its messages).

    Raises:
      FileNotFoundError / ValueError: one line naming the missing or bad file.
    """
    path = pathlib.Path(os.path.expanduser(str(path)))
    directory = path if path.is_dir() else path.parent
    if path.is_dir():
        found = [path / n for n in ("tokenizer.json", "tokenizer.model") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{path} holds neither tokenizer.json nor tokenizer.model: copy the model's "
                "tokenizer files there."
            )
        path = found[0]
    if path.suffix == ".json":
        return HFTokenizer(path, directory)
    ids = _sentencepiece_ids(path) if path.is_file() else None
    if ids is None or ids == own_ids:
        return None
    return SentencePieceTokenizer(path, directory)


def start_ids(tokenizer: Any, fallback: int) -> list[int]:
    """What a decoder-only prompt starts with: the model's BOS where it has one, else
    `fallback` (our vocabularies' start token, the pad id)."""
    bos = getattr(tokenizer, "bos_id", None)
    return [fallback if bos is None else bos]


def copy_tokenizer_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copies the tokenizer files of model directory `source` into `target`; returns their
    names. Raises FileNotFoundError if `source` has no tokenizer.json or tokenizer.model."""
    import shutil

    source, target = pathlib.Path(source), pathlib.Path(target)
    names = [n for n in TOKENIZER_FILES if (source / n).is_file()]
    if not {"tokenizer.json", "tokenizer.model"} & set(names):
        raise FileNotFoundError(
            f"{source} holds neither tokenizer.json nor tokenizer.model: copy the model's "
            "tokenizer files there."
        )
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(source / name, target / name)
    return names
