"""Dataset sources: prepared splits, and the errors for anything that is not prepared right."""

import json
import os
import shutil
import types

import pytest
import tensorflow_datasets as tfds
from etils import epath

from t5x_like.data import corpus, sources

TINY_SPLITS = {"train": ["one", "two", "three"], "test": ["caf\u00e9 four"]}


class TinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A two-split text dataset prepared in the test, standing in for any TFDS dataset."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(docs) for split, docs in TINY_SPLITS.items()}

    def _generate_examples(self, docs):
        for i, text in enumerate(docs):
            yield i, {"text": text}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tiny_tfds"))
    TinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def _texts(source) -> list[str]:
    return [sources.record_text(source[i]) for i in range(len(source))]


def test_prepare_dataset_reads_a_prepared_dataset(tiny_dir):
    """Every split is there, in sorted order, with its records and metadata counts."""
    splits = sources.prepare_dataset("tiny_text", tiny_dir)
    assert list(splits) == ["test", "train"]
    assert len(splits) == 2
    assert "train" in splits and "validation" not in splits
    for split, docs in TINY_SPLITS.items():
        source = splits[split]
        assert splits.num_examples(split) == len(source) == len(docs)
        assert sorted(_texts(source)) == sorted(docs)
        assert splits[split] is source  # Opened once.


def test_prepare_dataset_accepts_a_version(tiny_dir):
    """`name:version` finds the same prepared files."""
    splits = sources.prepare_dataset("tiny_text:1.0.0", tiny_dir)
    assert splits.num_examples("train") == len(TINY_SPLITS["train"])


def test_missing_dataset_raises_file_not_found_with_build_hint(tmp_path):
    """Nothing is downloaded; the message names the dataset, data_dir and `tfds build`."""
    # mnist is a registered TFDS dataset: still never downloaded.
    for name in ("mnist", "no_such_dataset"):
        with pytest.raises(FileNotFoundError) as info:
            sources.prepare_dataset(name, str(tmp_path))
        message = str(info.value)
        assert repr(name) in message
        assert str(tmp_path) in message
        assert "tfds build" in message
    assert os.listdir(tmp_path) == []


def test_unknown_split_raises_key_error_listing_the_available_splits(tiny_dir):
    """A missing split is a KeyError whose message names the dataset and the real splits."""
    splits = sources.prepare_dataset("tiny_text", tiny_dir)
    with pytest.raises(KeyError) as info:
        splits["validation"]
    message = str(info.value)
    assert "'validation'" in message
    assert "tiny_text" in message
    assert "['test', 'train']" in message
    # A KeyError, so Mapping.get works.
    assert splits.get("validation") is None
    with pytest.raises(KeyError, match=r"available splits: \['test', 'train'\]"):
        splits.num_examples("validation")


def test_empty_split_raises_value_error():
    """A split whose metadata counts no records is refused with a message naming it."""
    info = types.SimpleNamespace(
        splits={
            "train": types.SimpleNamespace(num_examples=3),
            "test": types.SimpleNamespace(num_examples=0),
        }
    )
    builder = types.SimpleNamespace(info=info, as_data_source=lambda split: [split] * 3)
    splits = sources.DatasetSplits("stub", "/data", builder)
    assert splits["train"] == ["train"] * 3
    with pytest.raises(ValueError, match=r"'test' of dataset 'stub' \(data_dir='/data'\) is empty"):
        splits["test"]


def test_dataset_in_a_format_without_random_access_raises_value_error(tiny_dir, tmp_path):
    """A dataset prepared as tfrecord is refused, with how to prepare it as array_record."""
    data_dir = str(tmp_path / "tfds")
    shutil.copytree(tiny_dir, data_dir)
    info_path = os.path.join(data_dir, "tiny_text", "1.0.0", "dataset_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info["fileFormat"] = "tfrecord"
    with open(info_path, "w") as f:
        json.dump(info, f)
    with pytest.raises(ValueError) as excinfo:
        sources.prepare_dataset("tiny_text", data_dir)
    message = str(excinfo.value)
    assert "'tfrecord'" in message
    assert "--file_format=array_record" in message
    assert data_dir in message


def test_num_examples_matches_the_corpus_sources(corpus_dir):
    """The metadata counts agree with the opened sources for the embedded corpus."""
    splits = sources.prepare_dataset(corpus.NAME, corpus_dir)
    for split in splits:
        assert splits.num_examples(split) == len(splits[split]) > 0


def test_record_text_decodes_bytes_and_passes_strings():
    """TFDS Text features arrive as UTF-8 bytes; strings and other keys also work."""
    assert sources.record_text({"text": "caf\u00e9".encode()}) == "caf\u00e9"
    assert sources.record_text({"text": "plain"}) == "plain"
    assert sources.record_text({"body": b"other key", "text": b"x"}, "body") == "other key"
    assert sources.record_text({"text": b""}) == ""


def test_record_text_missing_key_raises_a_clear_key_error():
    """The message names the missing key and what the record does have."""
    with pytest.raises(KeyError) as info:
        sources.record_text({"title": b"t", "body": b"b"})
    assert "'text'" in str(info.value)
    assert "['body', 'title']" in str(info.value)
    with pytest.raises(KeyError, match="'content'.*int"):
        sources.record_text(7, "content")


def test_resolve_data_dir(monkeypatch, tmp_path):
    """An explicit dir wins (with ~ expanded); else $TFDS_DATA_DIR; else ~/tensorflow_datasets."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", "/from/env")
    assert sources.resolve_data_dir("/explicit/dir") == "/explicit/dir"
    assert sources.resolve_data_dir("~/mine") == str(tmp_path / "mine")
    assert sources.resolve_data_dir(None) == "/from/env"
    assert sources.resolve_data_dir("") == "/from/env"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert sources.resolve_data_dir(None) == str(tmp_path / "tensorflow_datasets")


def test_prepare_dataset_defaults_to_tfds_data_dir(monkeypatch, tiny_dir):
    """Without a data_dir, the dataset is read from $TFDS_DATA_DIR."""
    monkeypatch.setenv("TFDS_DATA_DIR", tiny_dir)
    splits = sources.prepare_dataset("tiny_text")
    assert splits.data_dir == tiny_dir
    assert sorted(_texts(splits["train"])) == sorted(TINY_SPLITS["train"])


def test_the_embedded_corpus_is_built_when_asked_for_with_its_version(tmp_path):
    splits = sources.prepare_dataset("t5x_like_corpus:1.0.0", str(tmp_path))
    assert splits.num_examples("train") > 0
