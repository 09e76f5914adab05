"""The fine-tuning tasks in the pipeline: labelled examples -> encoder-only rows.

    classification        rows of `featurize.CLASSIFICATION_KEYS` (label [1], weights [1])
    token_classification  rows of `featurize.TAGGING_KEYS` (targets [L], weights [L])
    question_answering    rows of `qa_features.QA_KEYS`, one per window of each example

The pipeline's records here are labelled examples with label ids (`LabelledData.encoded()`
of `load_split`'s data), one padded row each (several for a long QA context); nothing is
packed, since each row has one label. `load_split` reads the examples named by data.dataset:
a built-in task ("builtin:<name>", `builtin_tasks.TASKS`), a .jsonl/.csv/.tsv file (split
train) or a directory of <split>.<ext> files, or a prepared TFDS dataset.
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from t5x_like.data import featurize, labelled, qa_features

# Task name -> the labelled data kind it reads.
TASK_KINDS = {
    "classification": "classification",
    "token_classification": "tagging",
    "question_answering": "qa",
}
BUILTIN_PREFIX = "builtin:"
_EXTENSIONS = (".jsonl", ".csv", ".tsv")
# Config field -> `labelled.Fields` attribute.
_FIELD_KEYS = {
    "text_key": "text",
    "text_b_key": "text_b",
    "label_key": "label",
    "tokens_key": "tokens",
    "tags_key": "tags",
    "id_key": "id",
    "question_key": "question",
    "context_key": "context",
    "answers_key": "answers",
}


def check_task(task: Any) -> None:
    """ValueError naming the data.<field> if a fine-tuning task's settings cannot work."""
    for field, minimum in (("seq_len", 3), ("doc_stride", 1), ("max_query_len", 1)):
        value = getattr(task, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(
                f"data.{field} must be an integer >= {minimum} for data.task={task.name!r}, "
                f"got {value!r}."
            )
    if task.name != "question_answering":
        return
    window = task.seq_len - task.max_query_len - 3  # Context tokens beside a full question.
    if window < 1:
        raise ValueError(
            f"data.seq_len={task.seq_len} leaves no context after a question of up to "
            f"data.max_query_len={task.max_query_len} tokens; raise data.seq_len or lower "
            "data.max_query_len."
        )
    if task.doc_stride > window:
        raise ValueError(
            f"data.doc_stride={task.doc_stride} is more than the {window} context tokens a "
            f"window holds (data.seq_len={task.seq_len} - data.max_query_len="
            f"{task.max_query_len} - 3), so windows would skip context; lower data.doc_stride."
        )


def row_features(task: Any) -> dict[str, int]:
    """Row key -> length of the task's rows."""
    base = dict.fromkeys(featurize.BASE_KEYS, task.seq_len)
    if task.name == "classification":
        return {**base, "label": 1, "weights": 1}
    if task.name == "token_classification":
        return {**base, "targets": task.seq_len, "weights": task.seq_len}
    return {**base, "start_positions": 1, "end_positions": 1, "weights": 1}


def fields_from_config(data_cfg: Any, base: labelled.Fields | None = None) -> labelled.Fields:
    """The source's field names: data.text_key, data.text_b_key, ... where they differ from
    their defaults, else `base`'s (a known TFDS dataset's, `labelled.TFDS_FIELDS`)."""
    defaults = labelled.Fields()
    base = base or defaults
    kwargs = {}
    for key, attr in _FIELD_KEYS.items():
        value = data_cfg.get(key, None) if hasattr(data_cfg, "get") else None
        unset = value in (None, "") or value == getattr(defaults, attr)
        kwargs[attr] = getattr(base, attr) if unset else value
    return labelled.Fields(**kwargs)


def _split_file(path: str, split: str) -> str:
    if os.path.isfile(path):
        if split != "train":
            raise ValueError(
                f"data.dataset={path!r} is one file, split 'train' only; for split {split!r} "
                f"make data.dataset a directory holding {split}.jsonl (or .csv / .tsv)."
            )
        return path
    for ext in _EXTENSIONS:
        candidate = os.path.join(path, split + ext)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"No {split}.jsonl, {split}.csv or {split}.tsv in data.dataset={path!r}."
    )


def load_split(
    data_cfg: Any, split: str, labels: Sequence[str] | None = None
) -> labelled.LabelledData:
    """The labelled examples of `split` for the config's fine-tuning task.

    Args:
      data_cfg: the config's `data` section (task, dataset, data_dir, labels, field keys).
      split: e.g. data.train_split or data.eval_split.
      labels: the label set to use when data.labels is unset (the train split's, so that
        evaluation uses the same ids); None: data.labels, else inferred.
    """
    task = data_cfg.get("task")
    if task not in TASK_KINDS:
        raise ValueError(f"data.task={task!r} is not a fine-tuning task {tuple(TASK_KINDS)}.")
    kind = TASK_KINDS[task]
    labels = labelled.parse_labels(data_cfg.get("labels", None)) or labels
    dataset = data_cfg.get("dataset")
    if dataset.startswith(BUILTIN_PREFIX):
        from t5x_like.data import builtin_tasks  # Here: it imports TFDS (via the corpus).

        name = dataset[len(BUILTIN_PREFIX) :]
        data = builtin_tasks.make_task(name)
        if builtin_tasks.TASKS[name] != kind:
            raise ValueError(
                f"data.dataset={dataset!r} is a {builtin_tasks.TASKS[name]} task, not data.task="
                f"{task!r}."
            )
        if split not in data:
            raise ValueError(f"data.dataset={dataset!r} has splits {sorted(data)}, not {split!r}.")
        data = data[split]
        return (
            data
            if labels is None
            else labelled.finish(kind, ((dataset, e) for e in data.examples), labels, dataset)
        )
    if os.path.exists(dataset) or dataset.endswith(_EXTENSIONS):
        fields = fields_from_config(data_cfg)
        return labelled.read_file(_split_file(dataset, split), kind, fields=fields, labels=labels)
    fields = fields_from_config(data_cfg, labelled.tfds_fields(dataset))
    data_dir = data_cfg.get("data_dir", None)
    return labelled.read_tfds(dataset, split, kind, data_dir=data_dir, fields=fields, labels=labels)


class _Rows(grain.experimental.FlatMapTransform):
    """An encoded example -> its row(s)."""

    max_fan_out = 1 << 16

    def __init__(self, vocab: Any, task: Any):
        self.encode = vocab.encode
        # An HF tokenizer's token offsets: QA answers at pieces, not whole words.
        self.encode_offsets = getattr(vocab, "encode_with_offsets", None)
        self.special = featurize.SpecialIds.from_vocab(vocab)
        self.task = task

    def flat_map(self, example: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        task, args = self.task, (self.encode, self.special, self.task.seq_len)
        if task.name == "classification":
            return [featurize.classification_row(example, *args, None)]
        if task.name == "token_classification":
            return [featurize.tagging_row(example, *args, None)]
        windows = qa_features.qa_windows(
            example,
            *args,
            doc_stride=task.doc_stride,
            max_query_len=task.max_query_len,
            encode_offsets=self.encode_offsets,
        )
        return [row for row, _ in windows]


def examples(docs: grain.MapDataset, vocab: Any, task: Any, read_options: Any) -> grain.IterDataset:
    """Encoded examples (a MapDataset, shuffled and repeated as the pipeline wants) -> rows."""
    return grain.experimental.FlatMapIterDataset(
        docs.to_iter_dataset(read_options), _Rows(vocab, task)
    )


class LabelledSplits(Mapping):
    """The fine-tuning splits of an experiment: split -> its examples with label ids (what
    the pipeline reads, random access), plus the `LabelledData` of each split (the raw
    examples, for QA references) and the label set shared by all of them (the train split's
    unless data.labels sets it)."""

    def __init__(self, dataset: str, data: dict[str, labelled.LabelledData]):
        self.name = dataset
        self.data_dir = dataset  # For the messages that name where a split came from.
        self.data = data
        self.labels: tuple[str, ...] = next(iter(data.values())).labels if data else ()
        self._encoded = {split: d.encoded() for split, d in data.items()}

    def __getitem__(self, split: str) -> list[dict[str, Any]]:
        return self._encoded[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._encoded)

    def __len__(self) -> int:
        return len(self._encoded)

    def num_examples(self, split: str) -> int:
        """Examples of `split`."""
        return len(self._encoded[split])


def prepare_splits(data_cfg: Any, splits: Sequence[str]) -> LabelledSplits:
    """`splits` of the config's fine-tuning data (the train split first: the others use its
    label set unless data.labels sets one)."""
    train = data_cfg.get("train_split", "train")
    ordered = [train] + [s for s in dict.fromkeys(splits) if s != train]
    out: dict[str, labelled.LabelledData] = {}
    labels = None
    for split in ordered:
        out[split] = load_split(data_cfg, split, labels)
        labels = labels or out[split].labels or None
    return LabelledSplits(data_cfg.get("dataset"), {s: out[s] for s in ordered})
