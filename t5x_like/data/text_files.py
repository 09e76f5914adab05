"""The user's own text files as a dataset for every text task: plain text, JSONL and TSV.

    data.dataset=/data/book.txt          one file: split "train"
    data.dataset='/data/books/*.txt'     a glob: its files, in sorted order, are split "train"
    data.dataset=/data/pairs             a directory: each <split>.txt / .jsonl / .tsv is a split

What a file's records are (the pipeline's records, as a TFDS source's would be):

    .txt    documents (str): one per blank-line-separated paragraph (data.text_sample_by=
            'paragraph'), one per line ('line') or one per file ('document'), as the
            `sample_by` of Hugging Face datasets' text loader. The text tasks read them whole.
    .jsonl  a JSON object per line; the task reads its fields (data.text_key, data.prompt_key /
            completion_key, data.inputs_key / targets_key).
    .tsv    tab-separated columns, no quoting. A first line naming the fields the task reads
            (e.g. `prompt<TAB>completion`) is a header; otherwise the columns are those fields in
            order: inputs, targets (seq2seq); prompt, completion (sft); text (the LM tasks).

A split may be sliced as TFDS writes it: `train[:95%]` and `train[95%:]` hold out a deterministic
part of a file as validation; `train[:1000]` takes the first records. Every record is read at open
and kept in memory (random access: the pipelines shard, shuffle and resume over it exactly as over
a TFDS array_record source). Bad input is one `ConfigError` naming the file and line: a missing or
empty file, bytes that are not UTF-8, a line that is not a JSON object, a TSV line with the wrong
number of columns, a record without a field the task reads.
"""

from __future__ import annotations

import glob
import json
import os
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from t5x_like.errors import ConfigError

EXTENSIONS = (".txt", ".jsonl", ".tsv")
SAMPLE_BY = ("paragraph", "line", "document")
_GLOB_CHARS = "*?["
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}
_JSON_TYPES.update({bool: "true/false", type(None): "null"})


class SplitNotFoundError(KeyError):
    """A split the dataset does not have; a KeyError whose message reads as a sentence."""

    def __str__(self) -> str:
        return str(self.args[0])


def is_user_files(name: str) -> bool:
    """Whether `data.dataset=name` names the user's files (a .txt/.jsonl/.tsv path, a glob, or
    a directory holding such files) rather than a TFDS dataset."""
    if name.endswith(EXTENSIONS) or any(c in name for c in _GLOB_CHARS):
        return True
    path = os.path.expanduser(name)
    return os.path.isdir(path) and any(f.endswith(EXTENSIONS) for f in os.listdir(path))


def decode_line(raw: bytes, path: str, number: int, what: str = "the file") -> str:
    """Line `number` of `path` as text, line break and a leading UTF-8 BOM dropped; the error
    for bytes that are not UTF-8 says to save `what` as UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
            f"{e.start + 1}): save {what} as UTF-8."
        ) from None
    text = text.rstrip("\r\n")
    return text.removeprefix("\ufeff") if number == 1 else text


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of `path`, checked to be UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, decode_line(raw, path, number)


def parse_jsonl_line(
    line: str,
    path: str,
    number: int,
    holds: str = 'a .jsonl file holds one object per line, e.g. {"text": "..."}',
) -> dict[str, Any] | None:
    """The JSON object on line `number` of `path`, or None for a blank line; the errors end
    with `holds`, what such a file should hold."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno}): {holds}."
        ) from None
    if not isinstance(record, dict):
        kind = _JSON_TYPES.get(type(record), type(record).__name__)
        raise ConfigError(f"{path}:{number}: {kind}, not a JSON object: {holds}.")
    return record


def read_jsonl(path: str, fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of `path`, one per non-empty line, each holding `fields` (strings)."""
    records = []
    for number, line in read_lines(path):
        record = parse_jsonl_line(line, path, number)
        if record is not None:
            if fields is not None:
                _check_fields(record, fields, f"{path}:{number}")
            records.append(record)
    return records


def _text_records(path: str, sample_by: str) -> list[str]:
    if sample_by == "line":
        return [line for _, line in read_lines(path) if line.strip()]
    lines = [line for _, line in read_lines(path)]
    if sample_by == "document":
        text = "\n".join(lines)
        return [text] if text.strip() else []
    docs, current = [], []
    for line in [*lines, ""]:  # A blank line ends a paragraph; so does the end of the file.
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    return docs


def _check_fields(record: dict[str, Any], fields: Sequence[str], where: str) -> None:
    if "messages" in record and not set(fields) & set(record):
        # A chat conversation, which SFT reads instead of prompt/completion (data/chat.py).
        from t5x_like.data import chat

        try:
            chat.check_messages(record["messages"])
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        return
    for field in fields:
        if field not in record:
            raise ConfigError(
                f"{where}: no field {field!r}, which the task reads; the record has "
                f"{sorted(record)}. Rename the field, or set the data.*_key naming it."
            )
        if not isinstance(record[field], str):
            raise ConfigError(f"{where}: field {field!r} must be a string, got {record[field]!r}.")


def _tsv_records(path: str, fields: Sequence[str] | None) -> list[Any]:
    records: list[Any] = []
    columns = None if fields is None else list(fields)
    first = True
    for number, line in read_lines(path):
        if not line.strip():
            continue
        cells = line.split("\t")
        if first and fields is not None and set(fields) <= set(cells):
            columns, first = cells, False  # A header naming the columns.
            continue
        first = False
        if columns is None:  # No fields to check against (the vocabulary reads every column).
            records.append(cells)
            continue
        if len(cells) != len(columns):
            raise ConfigError(
                f"{path}:{number}: {len(cells)} tab-separated columns where {len(columns)} "
                f"({', '.join(columns)}) are expected; a TSV field cannot hold a tab."
            )
        records.append(dict(zip(columns, cells, strict=True)))
    return records


def read_file(
    path: str, *, sample_by: str = "paragraph", fields: Sequence[str] | None = None
) -> list[Any]:
    """The records of one .txt, .jsonl or .tsv file (see the module docstring).

    Args:
      path: the file; its extension says the format.
      sample_by: what a .txt record is (SAMPLE_BY).
      fields: the record fields the task reads (`tasks.Task.record_fields`); a .jsonl or .tsv
        record without one of them is an error. None: not checked (vocabulary training).

    Raises:
      FileNotFoundError: no such file.
      ConfigError: one line naming the file (and line): empty, not UTF-8, malformed.
    """
    if sample_by not in SAMPLE_BY:
        raise ConfigError(f"data.text_sample_by={sample_by!r} must be one of {SAMPLE_BY}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file.")
    ext = os.path.splitext(path)[1]
    if ext == ".txt":
        if fields is not None and len(fields) != 1:
            raise ConfigError(
                f"{path} is plain text (one document per record), but the task reads the fields "
                f"{tuple(fields)}: give a .jsonl or .tsv file of them."
            )
        records: list[Any] = _text_records(path, sample_by)
    elif ext == ".tsv":
        records = _tsv_records(path, fields)
    elif ext == ".jsonl":
        records = read_jsonl(path, fields)
    else:
        raise ConfigError(f"{path}: unknown file type {ext!r}; use one of {EXTENSIONS}.")
    if not records:
        raise ConfigError(f"{path} holds no records (it is empty or blank): add some.")
    return records


class FileSplits(Mapping):
    """Split name -> list of records, like `sources.DatasetSplits` (`num_examples`, `data_dir`).

    A split's files are read on first access; a split may be sliced (`train[95%:]`).
    """

    def __init__(
        self,
        name: str,
        files: dict[str, list[str]],
        *,
        sample_by: str = "paragraph",
        fields: Sequence[str] | None = None,
    ):
        self.name = name
        self.data_dir = os.path.dirname(next(iter(files.values()))[0])
        self.files = files
        self.sample_by = sample_by
        self.fields = None if fields is None else tuple(fields)
        self._records: dict[str, list[Any]] = {}

    def _whole(self, split: str) -> list[Any]:
        if split not in self.files:
            raise SplitNotFoundError(
                f"data.dataset={self.name!r} has no split {split!r}; it has "
                f"{sorted(self.files)}. Add a {split}.txt/.jsonl/.tsv file beside them, or hold "
                "out part of the train split: data.train_split='train[:95%]', "
                "data.eval_split='train[95%:]'."
            )
        if split not in self._records:
            records = []
            for path in self.files[split]:
                records += read_file(path, sample_by=self.sample_by, fields=self.fields)
            self._records[split] = records
        return self._records[split]

    def __getitem__(self, split: str) -> list[Any]:
        if not is_slice(split):
            return self._whole(split)
        sizes = {name: len(self._whole(name)) for name in split_names(split)}
        records: list[Any] = []
        for name, start, stop in slice_bounds(split, sizes):
            records += self._whole(name)[start:stop]
        if not records:
            raise ConfigError(
                f"Split {split!r} of data.dataset={self.name!r} selects none of its "
                f"{sum(sizes.values())} records: widen the slice."
            )
        return records

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def num_examples(self, split: str) -> int:
        """Records in `split` (reads its files)."""
        return len(self[split])


def is_slice(split: str) -> bool:
    """Whether `split` is a TFDS split expression (`train[:95%]`, `train+validation`)."""
    return "[" in split or "+" in split


def _instruction(split: str) -> Any:
    import tensorflow_datasets as tfds  # Here: only slices need it, and it is slow to import.

    try:
        return tfds.core.ReadInstruction.from_spec(split)
    except (ValueError, AssertionError) as e:
        raise ConfigError(
            f"Split {split!r} is neither a split name nor a TFDS slice such as 'train[:95%]' "
            f"or 'train[95%:]' ({e})."
        ) from None


def _relative(instruction: Any) -> list[Any]:
    if hasattr(instruction, "left"):  # `a + b`
        return _relative(instruction.left) + _relative(instruction.right)
    return [instruction]


def split_names(split: str) -> list[str]:
    """The split names a split expression reads, e.g. ['train'] for 'train[95%:]'."""
    return list(dict.fromkeys(r.split_name for r in _relative(_instruction(split))))


def slice_bounds(split: str, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """(split name, start, stop) of each part of a split expression, given each split's size,
    as TFDS resolves it (percentages rounded to the closest record)."""
    infos = {k: types.SimpleNamespace(num_examples=n, shard_lengths=[n]) for k, n in sizes.items()}
    try:
        parts = _instruction(split).to_absolute(infos)
    except ValueError as e:  # An index beyond the split.
        raise ConfigError(f"Split {split!r}: {e}") from None
    # TFDS leaves an open end as None.
    return [
        (p.splitname, p.from_ or 0, sizes[p.splitname] if p.to is None else p.to) for p in parts
    ]


def _directory_splits(path: str, name: str) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {}
    for f in sorted(os.listdir(path)):
        split, ext = os.path.splitext(f)
        if ext in EXTENSIONS and os.path.isfile(os.path.join(path, f)):
            files.setdefault(split, []).append(os.path.join(path, f))
    for split, paths in files.items():
        if len(paths) > 1:
            raise ConfigError(
                f"data.dataset={name!r} has {len(paths)} files for split {split!r} "
                f"({', '.join(os.path.basename(p) for p in paths)}): keep one."
            )
    return files


def open_files(
    name: str, *, sample_by: str = "paragraph", fields: Sequence[str] | None = None
) -> FileSplits:
    """The splits of the user's files named by `data.dataset=name` (see the module docstring).

    Args:
      name: a file, a glob of files, or a directory of <split>.<ext> files.
      sample_by: what a .txt record is (SAMPLE_BY).
      fields: the record fields the task reads, checked in every record (None: unchecked).

    Raises:
      FileNotFoundError: nothing at `name` (no file, directory or glob match).
      ConfigError: a glob matching files of no known type, or two files for one split.
    """
    path = os.path.abspath(os.path.expanduser(name))
    hint = (
        "point it at a .txt, .jsonl or .tsv file (the train split), a glob of them, or a "
        "directory of <split>.txt/.jsonl/.tsv files"
    )
    if os.path.isdir(path):
        files = _directory_splits(path, name)
    elif os.path.isfile(path):
        files = {"train": [path]}
    elif any(c in name for c in _GLOB_CHARS):
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"data.dataset={name!r} matches no file: {hint}.")
        unknown = [p for p in matches if not p.endswith(EXTENSIONS)]
        if unknown:
            raise ConfigError(
                f"data.dataset={name!r} matches {unknown[0]}, not a {'/'.join(EXTENSIONS)} file: "
                "narrow the glob."
            )
        files = {"train": matches}
    else:
        kinds = {".txt": "text ", ".jsonl": "JSONL ", ".tsv": "TSV "}
        kind = kinds.get(os.path.splitext(path)[1], "")
        raise FileNotFoundError(f"data.dataset={name!r}: no such {kind}file or directory; {hint}.")
    if not files:
        raise FileNotFoundError(f"data.dataset={name!r} holds no data file: {hint}.")
    return FileSplits(name, files, sample_by=sample_by, fields=fields)
