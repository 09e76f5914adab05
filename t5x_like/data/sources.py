"""Random-access TFDS sources (array_record) by dataset name; never downloads.

`prepare_dataset` reads a dataset already prepared under a data dir; the exceptions are the
embedded datasets, the corpus (`t5x_like_corpus`) and the labelled docstrings made from it
(`t5x_like_docstrings`), which are built on the spot because they need no network.
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from t5x_like.data import corpus, docstrings, jsonl

# Datasets built from the Python installation itself: name -> build(data_dir).
EMBEDDED_DATASETS = {corpus.NAME: corpus.build, docstrings.NAME: docstrings.build}


class SplitNotFoundError(KeyError):
    """A split the dataset does not have; a KeyError whose message reads as a sentence."""

    def __str__(self) -> str:
        return str(self.args[0])


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

    def _check_split(self, split: str) -> None:
        if split not in self._num_examples:
            raise SplitNotFoundError(
                f"Dataset {self.name!r} (data_dir={self.data_dir!r}) has no split {split!r}; "
                f"available splits: {sorted(self._num_examples)}."
            )

    def __getitem__(self, split: str) -> Sequence[Any]:
        self._check_split(split)
        if self._num_examples[split] == 0:
            raise ValueError(
                f"Split {split!r} of dataset {self.name!r} (data_dir={self.data_dir!r}) is "
                "empty; choose another split or re-prepare the dataset."
            )
        if split not in self._sources:
            self._sources[split] = self.builder.as_data_source(split=split)
        return self._sources[split]

    def __contains__(self, split: object) -> bool:
        return split in self._num_examples

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._num_examples))

    def __len__(self) -> int:
        return len(self._num_examples)

    def num_examples(self, split: str) -> int:
        """Records in `split`, from the dataset's metadata (no file is opened)."""
        self._check_split(split)
        return self._num_examples[split]


def prepare_dataset(name: str, data_dir: str | None = None) -> DatasetSplits:
    """The splits of TFDS dataset `name` prepared as array_record under `data_dir`.

    Args:
      name: a TFDS name, optionally with config and version (`"lm1b"`, `"c4/en:3.0.1"`).
        The embedded datasets (`EMBEDDED_DATASETS`) are built under `data_dir` first if they
        are not there yet. A `.jsonl` file or a directory of `<split>.jsonl` files is read
        as JSONL instead (`jsonl.open_jsonl`).
      data_dir: TFDS data dir; None means TFDS's default.

    Raises:
      FileNotFoundError: the dataset is not prepared under `data_dir` (nothing is downloaded);
        the message says how to prepare it.
      ValueError: it is prepared in a format without random access (e.g. tfrecord).
    """
    if jsonl.is_jsonl_dataset(name):  # The user's own files (`jsonl.py`): no TFDS involved.
        return jsonl.open_jsonl(name)
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
    """The text feature of a decoded TFDS record (TFDS returns Text features as bytes)."""
    try:
        value = record[text_key]
    except (KeyError, TypeError, IndexError) as e:
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise KeyError(f"Record has no text feature {text_key!r}; it has {keys}.") from e
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
