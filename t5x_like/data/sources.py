"""Random-access TFDS sources (array_record) by dataset name; never downloads.

`prepare_dataset` reads a dataset already prepared under a data dir; the exceptions are the
embedded datasets, the corpus (`t5x_like_corpus`) and the labelled docstrings made from it
(`t5x_like_docstrings`), which are built on the spot because they need no network, and the
user's own .txt / .jsonl / .tsv files, read by `text_files.py`.
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from t5x_like.data import corpus, docstrings, text_files
from t5x_like.data.text_files import SplitNotFoundError

# Datasets built from the Python installation itself: name -> build(data_dir).
EMBEDDED_DATASETS = {corpus.NAME: corpus.build, docstrings.NAME: docstrings.build}


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, or TFDS's default ($TFDS_DATA_DIR, else ~/tensorflow_datasets)."""
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _build_hint(name: str, data_dir: str) -> str:
    return (
        f"prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record` "
        "(on a machine with network access), or use the embedded corpus "
        f"{corpus.NAME!r}, which needs no download"
    )


class DatasetSplits(Mapping):
    """The splits of one prepared dataset: split name -> random-access source of records.

    Sources are opened on first access. Asking for a missing split or an empty one raises an
    error that names the dataset, its data dir and the splits it does have.
    """

    def __init__(self, name: str, data_dir: str, builder: tfds.core.DatasetBuilder):
        self.name = name
        self.data_dir = data_dir
        self.builder = builder
        self._num_examples = {s: info.num_examples for s, info in builder.info.splits.items()}
        self._sources: dict[str, Sequence[Any]] = {}

    def _check_split(self, split: str) -> int:
        """The records of `split` (a name or a TFDS slice such as 'train[95%:]')."""
        for name in text_files.split_names(split) if text_files.is_slice(split) else [split]:
            if name not in self._num_examples:
                raise SplitNotFoundError(
                    f"Dataset {self.name!r} (data_dir={self.data_dir!r}) has no split {name!r}; "
                    f"available splits: {sorted(self._num_examples)}."
                )
        if not text_files.is_slice(split):
            return self._num_examples[split]
        bounds = text_files.slice_bounds(split, self._num_examples)
        return sum(stop - start for _, start, stop in bounds)

    def __getitem__(self, split: str) -> Sequence[Any]:
        if self._check_split(split) == 0:
            raise ValueError(
                f"Split {split!r} of dataset {self.name!r} (data_dir={self.data_dir!r}) is "
                "empty; choose another split or re-prepare the dataset."
            )
        if split not in self._sources:
            # TFDS reads slices ('train[:95%]') itself, with the bounds `slice_bounds` gives.
            self._sources[split] = self.builder.as_data_source(split=split)
        return self._sources[split]

    def __contains__(self, split: object) -> bool:
        if not isinstance(split, str):
            return False
        if text_files.is_slice(split):
            return all(s in self._num_examples for s in text_files.split_names(split))
        return split in self._num_examples

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._num_examples))

    def __len__(self) -> int:
        return len(self._num_examples)

    def num_examples(self, split: str) -> int:
        """Records in `split` (a name or a slice), from the dataset's metadata (no file is
        opened)."""
        return self._check_split(split)


def prepare_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    sample_by: str = "paragraph",
    fields: Sequence[str] | None = None,
) -> DatasetSplits | text_files.FileSplits:
    """The splits of TFDS dataset `name` prepared as array_record under `data_dir`.

    Args:
      name: a TFDS name, optionally with config and version (`"lm1b"`, `"c4/en:3.0.1"`).
        The embedded datasets (`EMBEDDED_DATASETS`) are built under `data_dir` first if they
        are not there yet. The user's own files (a .txt, .jsonl or .tsv file, a glob of them
        or a directory of `<split>.<ext>` files) are read instead (`text_files.open_files`).
      data_dir: TFDS data dir; None means TFDS's default.
      sample_by, fields: for the user's files: what a .txt record is (data.text_sample_by),
        and the record fields the task reads (`tasks.Task.record_fields`; None: unchecked).

    Raises:
      FileNotFoundError: the dataset is not prepared under `data_dir` (nothing is downloaded);
        the message says how to prepare it.
      ValueError: it is prepared in a format without random access (e.g. tfrecord).
    """
    if text_files.is_user_files(name):  # The user's own files: no TFDS involved.
        return text_files.open_files(name, sample_by=sample_by, fields=fields)
    data_dir = resolve_data_dir(data_dir)
    build = EMBEDDED_DATASETS.get(name.split(":")[0])  # With or without a version.
    if build is not None:
        build(data_dir)
    try:
        # From files only: never instantiates the dataset's code, so it cannot download.
        builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared under data_dir={data_dir!r}, and t5x_like never "
            f"downloads data: {_build_hint(name, data_dir)}."
        ) from e
    file_format = builder.info.file_format
    if file_format is None or file_format.value != "array_record":
        raise ValueError(
            f"Dataset {name!r} under data_dir={data_dir!r} is stored as "
            f"{getattr(file_format, 'value', file_format)!r}, which has no random access; "
            f"{_build_hint(name, data_dir)} (or install the [tf] extra for the tf.data path)."
        )
    return DatasetSplits(name, data_dir, builder)


def record_text(record: Any, text_key: str = "text") -> str:
    """The text feature of a decoded TFDS record (TFDS returns Text features as bytes); a
    record that is a string (a document of a .txt file) is its own text."""
    if isinstance(record, str):
        return record
    try:
        value = record[text_key]
    except (KeyError, TypeError, IndexError) as e:
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise KeyError(f"Record has no text feature {text_key!r}; it has {keys}.") from e
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def vocab_texts(record: Any, text_key: str = "text") -> str:
    """The text a vocabulary trains on from `record`: its `text_key` feature, or where it has
    none (a seq2seq or SFT pair, a TSV line), all its text features, one per line."""
    if isinstance(record, Mapping) and text_key not in record:
        values = record.values()
    elif isinstance(record, (list, tuple)):
        values = record
    else:
        return record_text(record, text_key)
    texts = (v.decode("utf-8") if isinstance(v, bytes) else v for v in values)
    return "\n".join(t for t in texts if isinstance(t, str))
