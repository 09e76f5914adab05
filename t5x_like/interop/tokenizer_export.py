"""Tokenizer files for an exported checkpoint whose workdir trained with our own SentencePiece
vocabulary (`t5x_like.data.vocab.SentencePieceVocab`: pad 0, eos 1, unk 2, no BOS, T5 sentinels
after the pieces).

Those are T5's conventions, so transformers' `T5Tokenizer` expresses the vocabulary exactly: it
converts the SentencePiece model (transformers' own SentencePiece -> `tokenizers` conversion)
with the same `extra_ids`, and `AutoTokenizer.from_pretrained(directory)` then encodes text as
our vocabulary does (`add_special_tokens=True` appends EOS, as our documents end). The original
`.model` is written too (as `spiece.model`, T5's name for it).

    write_sentencepiece_tokenizer(vocab, "exported_dir")
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

SPIECE = "spiece.model"


def write_sentencepiece_tokenizer(vocab: Any, directory: str | os.PathLike) -> list[str]:
    """Writes `vocab`'s tokenizer files (tokenizer.json, tokenizer_config.json, spiece.model)
    into `directory`; returns their names. `vocab` is a `SentencePieceVocab` (its model proto and
    `extra_ids`). Needs transformers (the `[hf]` extra)."""
    import transformers

    proto = vocab.__getstate__()["model_proto"]
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as source:
        source = pathlib.Path(source)
        (source / SPIECE).write_bytes(proto)
        settings = {"tokenizer_class": "T5Tokenizer", "extra_ids": vocab.extra_ids}
        (source / "tokenizer_config.json").write_text(json.dumps(settings))
        tokenizer = transformers.T5Tokenizer.from_pretrained(str(source))
        written = tokenizer.save_pretrained(str(directory))
    (directory / SPIECE).write_bytes(proto)
    return sorted({pathlib.Path(p).name for p in written} | {SPIECE})
