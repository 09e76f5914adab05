"""JSONL files as a dataset: `data.dataset` naming a `.jsonl` file (split "train") or a directory
of `<split>.jsonl` files. Records are the files' objects, read whole at open (random access, so
the pipelines shard, shuffle and resume over them exactly as over TFDS array_record sources).

    splits = open_jsonl("/data/pairs")          # /data/pairs/train.jsonl, validation.jsonl
    splits["train"][0]                          # {"prompt": "...", "completion": "..."}

Malformed lines fail with one `ValueError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any


def is_jsonl_dataset(name: str) -> bool:
    """Whether `data.dataset=name` names JSONL data (a .jsonl path or a directory holding
    .jsonl files) rather than a TFDS dataset."""
    path = os.path.expanduser(name)
    if name.endswith(".jsonl"):
        return True
    return os.path.isdir(path) and any(f.endswith(".jsonl") for f in os.listdir(path))


def read_records(path: str) -> list[dict[str, Any]]:
    """The JSON objects of `path`, one per non-empty line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {line.strip()!r}.")
            records.append(record)
    return records


class JsonlSplits(Mapping):
    """Split name -> list of records, like `sources.DatasetSplits` (`num_examples`,
    `data_dir`); each file is read on first access."""

    def __init__(self, name: str, files: dict[str, str]):
        self.name = name
        self.data_dir = os.path.dirname(next(iter(files.values())))
        self.files = files
        self._records: dict[str, list[dict[str, Any]]] = {}

    def __getitem__(self, split: str) -> list[dict[str, Any]]:
        if split not in self.files:
            raise KeyError(
                f"JSONL dataset {self.name!r} has no split {split!r} (no {split}.jsonl); "
                f"available splits: {sorted(self.files)}."
            )
        if split not in self._records:
            self._records[split] = read_records(self.files[split])
        return self._records[split]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def num_examples(self, split: str) -> int:
        """Records in `split` (reads its file)."""
        return len(self[split])


def open_jsonl(name: str) -> JsonlSplits:
    """The splits of a JSONL dataset: a `.jsonl` file is split "train", a directory's
    `<split>.jsonl` files are theirs. FileNotFoundError names the missing path."""
    path = os.path.abspath(os.path.expanduser(name))
    if os.path.isdir(path):
        files = {
            f.removesuffix(".jsonl"): os.path.join(path, f)
            for f in sorted(os.listdir(path))
            if f.endswith(".jsonl")
        }
    elif os.path.isfile(path):
        files = {"train": path}
    else:
        raise FileNotFoundError(
            f"data.dataset={name!r}: no such JSONL file or directory; point it at a .jsonl file "
            "(the train split) or a directory of <split>.jsonl files."
        )
    return JsonlSplits(name, files)
