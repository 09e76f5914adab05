"""Labelled data the user brings: JSONL and CSV/TSV files, or TFDS datasets already prepared.

Three kinds of example, whatever the source (`featurize.py` and `qa_features.py` turn them into
rows):

    classification  {"text": str, "text_b": str | None, "label": str}
    tagging         {"tokens": [str, ...], "tags": ["O", "B-PER", "I-PER", ...]}   (BIO)
    qa              {"id": str, "question": str, "context": str,
                     "answers": [{"text": str, "start": int}, ...]}   (char offsets; [] = none)

`Fields` names the source's fields (config: data.text_key, data.text_b_key, data.label_key,
...). In CSV/TSV files a tagging record's tokens and tags are space-separated strings and a QA
record's answers a JSON value. The label set is the one given (data.labels, in its order) or the
labels seen in the data, sorted (tagging: "O" first, then B-/I- of each type by type), so the
label ids do not depend on the record order. Bad input raises one `ValueError` line naming the
file and line (or the dataset and record) and what to change.

    data = read_file("train.jsonl", "classification", fields=Fields(text="sentence"))
    data = read_tfds("glue/sst2", "train", "classification", data_dir=...)
"""

import csv
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ("classification", "tagging", "qa")
OUTSIDE = "O"


@dataclasses.dataclass(frozen=True)
class Fields:
    """The source's field names for each part of an example (None: the example has none)."""

    text: str = "text"
    text_b: str | None = None
    label: str = "label"
    tokens: str = "tokens"
    tags: str = "tags"
    id: str | None = "id"
    question: str = "question"
    context: str = "context"
    answers: str = "answers"


# How a field is set in the config, for the messages.
_CONFIG_NAMES = {
    "text": "data.text_key",
    "text_b": "data.text_b_key",
    "label": "data.label_key",
    "tokens": "data.tokens_key",
    "tags": "data.tags_key",
    "id": "data.id_key",
    "question": "data.question_key",
    "context": "data.context_key",
    "answers": "data.answers_key",
}

# Feature names of well-known TFDS datasets (by name without version), mapped onto `Fields`.
TFDS_FIELDS: dict[str, Fields] = {
    "glue/sst2": Fields(text="sentence"),
    "glue/cola": Fields(text="sentence"),
    "glue/mrpc": Fields(text="sentence1", text_b="sentence2"),
    "glue/rte": Fields(text="sentence1", text_b="sentence2"),
    "glue/wnli": Fields(text="sentence1", text_b="sentence2"),
    "glue/qqp": Fields(text="question1", text_b="question2"),
    "glue/qnli": Fields(text="question", text_b="sentence"),
    "glue/mnli": Fields(text="premise", text_b="hypothesis"),
    "conll2003": Fields(tokens="tokens", tags="ner"),
    "squad": Fields(id="id", question="question", context="context", answers="answers"),
}


@dataclasses.dataclass(frozen=True)
class LabelledData:
    """Examples of one kind and their label set (label id = index; empty for qa)."""

    kind: str
    examples: list[dict[str, Any]]
    labels: tuple[str, ...]

    @property
    def label_ids(self) -> dict[str, int]:
        """label -> id."""
        return {label: i for i, label in enumerate(self.labels)}

    def encoded(self) -> list[dict[str, Any]]:
        """The examples with label ids for labels (classification: `label` an int; tagging:
        `tags` ints), as the pipeline's rows read them."""
        ids = self.label_ids
        if self.kind == "classification":
            return [{**e, "label": ids[e["label"]]} for e in self.examples]
        if self.kind == "tagging":
            return [{**e, "tags": [ids[t] for t in e["tags"]]} for e in self.examples]
        return list(self.examples)


class _Where:
    """Says where a record came from, for one-line errors."""

    def __init__(self, source: str, unit: str):
        self.source, self.unit = source, unit

    def __call__(self, index: int) -> str:
        return f"{self.source} {self.unit} {index}"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"Labelled data kind {kind!r} is not one of {KINDS}.")


def _field(record: Mapping[str, Any], name: str, role: str, where: str) -> Any:
    if name not in record:
        raise ValueError(
            f"{where}: no field {name!r} (it has {sorted(record)}); set "
            f"{_CONFIG_NAMES[role]} to the field that holds the {role.replace('_', ' ')}."
        )
    return record[name]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value if isinstance(value, str) else str(value)


def _sequence(value: Any, delimited: bool) -> list[str]:
    if delimited and isinstance(value, str):
        return value.split()
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError
    return [_text(v) for v in value]


def _answers(value: Any, delimited: bool, where: str) -> list[dict[str, Any]]:
    """Answers as [{"text", "start"}]: from {"text": [...], "answer_start": [...]} (SQuAD,
    TFDS), a list of {"text", "answer_start"|"start"}, or (CSV) a JSON text of either."""
    if delimited and isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: the answers are not valid JSON ({e.msg}).") from None
    if isinstance(value, Mapping):
        texts, starts = value.get("text", []), value.get("answer_start", value.get("start", []))
        value = [{"text": t, "start": s} for t, s in zip(texts, starts, strict=False)]
    try:
        return [
            {"text": _text(a["text"]), "start": int(a.get("start", a.get("answer_start")))}
            for a in value
        ]
    except (TypeError, KeyError, ValueError, AttributeError):
        raise ValueError(
            f"{where}: answers must be {{'text': [...], 'answer_start': [...]}} or a list of "
            "{'text', 'answer_start'} records."
        ) from None


def _check_answers(answers: list[dict[str, Any]], context: str, where: str) -> None:
    for i, answer in enumerate(answers):
        start, text = answer["start"], answer["text"]
        end = start + len(text)
        if not text or start < 0 or end > len(context):
            raise ValueError(
                f"{where}: answer {i} ({text!r} at character {start}) lies outside the "
                f"{len(context)}-character context; fix its answer_start or its text."
            )
        if context[start:end] != text:
            raise ValueError(
                f"{where}: answer {i} is {text!r} but the context at characters {start}:{end} "
                f"reads {context[start:end]!r}; fix its answer_start or its text."
            )


def parse_record(
    record: Mapping[str, Any],
    kind: str,
    fields: Fields,
    where: str,
    *,
    delimited: bool = False,
    label_names: Sequence[str] | None = None,
    index: int = 0,
) -> dict[str, Any]:
    """One source record as an example of `kind` (module docstring); errors name `where`.

    Args:
      delimited: a CSV/TSV row (tokens and tags space-separated, answers as JSON text).
      label_names: names of integer labels (a TFDS ClassLabel), or None if labels are text.
      index: the record's position, its QA id when the source has no id field.
    """
    if kind == "classification":
        label = _field(record, fields.label, "label", where)
        if label_names is not None and not isinstance(label, (str, bytes)):
            label = int(label)
            if not 0 <= label < len(label_names):
                raise ValueError(
                    f"{where}: label {label} is not a class of this dataset "
                    f"({len(label_names)} classes); unlabelled splits cannot be trained on."
                )
            label = label_names[label]
        text_b = None if fields.text_b is None else _field(record, fields.text_b, "text_b", where)
        return {
            "text": _text(_field(record, fields.text, "text", where)),
            "text_b": None if text_b is None else _text(text_b),
            "label": _text(label),
        }
    if kind == "tagging":
        tokens = _field(record, fields.tokens, "tokens", where)
        tags = _field(record, fields.tags, "tags", where)
        try:
            tokens, tags = _sequence(tokens, delimited), _sequence(tags, delimited)
        except TypeError:
            raise ValueError(f"{where}: tokens and tags must be lists of strings.") from None
        if label_names is not None:
            tags = [label_names[int(t)] if t.lstrip("-").isdigit() else t for t in tags]
        if len(tokens) != len(tags):
            raise ValueError(
                f"{where}: {len(tokens)} tokens but {len(tags)} tags; tags do not align with "
                "the tokens (each token needs exactly one tag)."
            )
        if not tokens:
            raise ValueError(f"{where}: no tokens; drop the empty record.")
        return {"tokens": tokens, "tags": tags}
    context = _text(_field(record, fields.context, "context", where))
    answers = _answers(_field(record, fields.answers, "answers", where), delimited, where)
    _check_answers(answers, context, where)
    eid = index if fields.id is None or fields.id not in record else record[fields.id]
    return {
        "id": _text(eid),
        "question": _text(_field(record, fields.question, "question", where)),
        "context": context,
        "answers": answers,
    }


def _check_tag(tag: str, where: str) -> None:
    if tag != OUTSIDE and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
        raise ValueError(
            f"{where}: tag {tag!r} is not BIO; tags are 'O', 'B-<type>' or 'I-<type>'."
        )


def _tag_order(tag: str) -> tuple[int, str, str]:
    return (0, "", "") if tag == OUTSIDE else (1, tag[2:], tag[:2])


def parse_labels(labels: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """A label set from config: a comma-separated string (data.labels) or a sequence."""
    if labels is None or labels == "":
        return None
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",")]
    out = tuple(labels)
    if len(set(out)) != len(out) or not all(out):
        raise ValueError(f"data.labels={','.join(out)!r} must list distinct, non-empty labels.")
    return out


def finish(
    kind: str,
    records: Iterable[tuple[str, dict[str, Any]]],
    labels: Sequence[str] | None,
    source: str,
) -> LabelledData:
    """Checks the labels of parsed (where, example) pairs against `labels`, or infers them."""
    _check_kind(kind)
    pairs = list(records)
    if not pairs:
        raise ValueError(f"{source} has no records; point the data path at a non-empty file.")
    given = parse_labels(labels)
    examples = [example for _, example in pairs]
    if kind == "qa":
        return LabelledData(kind, examples, ())
    seen: dict[str, str] = {}
    for where, example in pairs:
        values = [example["label"]] if kind == "classification" else example["tags"]
        for value in values:
            if kind == "tagging":
                _check_tag(value, where)
            if given is not None and value not in given:
                raise ValueError(
                    f"{where}: label {value!r} is not in data.labels {list(given)}; add it to "
                    "data.labels or fix the record."
                )
            seen.setdefault(value, where)
    if given is not None:
        return LabelledData(kind, examples, given)
    if kind == "classification":
        return LabelledData(kind, examples, tuple(sorted(seen)))
    types = {tag[2:] for tag in seen if tag != OUTSIDE}
    tags = [OUTSIDE] + [f"{p}-{t}" for t in sorted(types) for p in ("B", "I")]
    return LabelledData(kind, examples, tuple(sorted(tags, key=_tag_order)))


def _jsonl_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {line_number}: not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {line_number}: a JSON object is expected.")
            yield line_number, record


def _delimited_records(path: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            return
        for row in reader:
            # DictReader puts extra values in a list under None, and None for missing ones.
            if None in row or None in row.values():
                columns = len(row.get(None, [])) + sum(
                    v is not None for k, v in row.items() if k is not None
                )
                raise ValueError(
                    f"{path} line {reader.line_num}: {columns} columns where the header has "
                    f"{len(reader.fieldnames)}; fix the row."
                )
            yield reader.line_num, row


def file_format(path: str) -> str:
    """The file's format from its extension: "jsonl", "csv" or "tsv"."""
    ext = os.path.splitext(path)[1].lower()
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
    if ext not in formats:
        raise ValueError(f"{path}: unknown labelled file type {ext!r}; use .jsonl, .csv or .tsv.")
    return formats[ext]


def read_file(
    path: str,
    kind: str,
    *,
    fields: Fields = Fields(),
    labels: str | Sequence[str] | None = None,
) -> LabelledData:
    """The examples of a JSONL (one JSON object a line), CSV or TSV file (header row).

    Args:
      path: the file; its extension says the format.
      kind: one of KINDS.
      fields: the file's field names.
      labels: the label set (data.labels: a comma-separated string or a sequence), or None to
        infer it from the data.

    Raises:
      FileNotFoundError: no such file.
      ValueError: one line naming the file, the line and what to change: an empty file, a
        missing field, an unknown label, tags that do not align with the tokens, an answer
        outside its context.
    """
    _check_kind(kind)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Labelled data file not found: {path}.")
    fmt = file_format(path)
    if fmt == "jsonl":
        rows = _jsonl_records(path)
    else:
        rows = _delimited_records(path, "," if fmt == "csv" else "\t")
    delimited = fmt != "jsonl"
    where = _Where(path, "line")
    parsed = (
        (
            where(line),
            parse_record(record, kind, fields, where(line), delimited=delimited, index=i),
        )
        for i, (line, record) in enumerate(rows)
    )
    return finish(kind, parsed, labels, path)


def _class_names(feature: Any) -> list[str] | None:
    """The names of a TFDS ClassLabel (or a Sequence of one), else None."""
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel.
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _decoded(value: Any) -> Any:
    """A TFDS data-source value as plain Python (bytes -> str, arrays -> lists)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decoded(v) for v in value.tolist()] if value.ndim else _decoded(value.item())
    if isinstance(value, (list, tuple)):
        return [_decoded(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def tfds_fields(name: str) -> Fields:
    """The field names of TFDS dataset `name` (`TFDS_FIELDS`; "squad/v2.0:3.0.0" reads as
    "squad" unless it has its own entry), else the defaults."""
    base = name.split(":")[0]
    return TFDS_FIELDS.get(base, TFDS_FIELDS.get(base.split("/")[0], Fields()))


def read_tfds(
    name: str,
    split: str,
    kind: str,
    *,
    data_dir: str | None = None,
    fields: Fields | None = None,
    labels: str | Sequence[str] | None = None,
) -> LabelledData:
    """The examples of a TFDS dataset already prepared (array_record) under `data_dir`.

    Args:
      name: e.g. "glue/sst2", "conll2003", "squad" (their feature names are in `TFDS_FIELDS`)
        or any dataset whose features `fields` names.
      fields: None: `TFDS_FIELDS[name]` (without version), else the defaults.
      labels: as in `read_file`; None takes the dataset's ClassLabel names (in their id
        order) when the label feature is one, else infers them.

    Raises:
      FileNotFoundError: the dataset is not prepared (nothing is ever downloaded).
      ValueError: as `read_file`, naming the dataset, split and record index.
    """
    from t5x_like.data import sources  # Here: reading files needs no TFDS.

    _check_kind(kind)
    if fields is None:
        fields = tfds_fields(name)
    splits = sources.prepare_dataset(name, data_dir)
    source = splits[split]
    features = splits.builder.info.features
    label_feature = {"classification": fields.label, "tagging": fields.tags}.get(kind)
    names = _class_names(features[label_feature]) if label_feature in features else None
    where = _Where(f"{name}[{split}]", "record")
    parsed = (
        (
            where(i),
            parse_record(_decoded(source[i]), kind, fields, where(i), label_names=names, index=i),
        )
        for i in range(len(source))
    )
    return finish(kind, parsed, labels if labels is not None else names, f"{name}[{split}]")
