"""The embedded corpus: its splits, their contents, the hash split and idempotent builds."""

import json
import os
import pydoc_data.topics
import subprocess
import sys

import pytest

from t5x_like.data import corpus, sources, stdlib_docs


def _texts(source) -> list[str]:
    return [sources.record_text(source[i]) for i in range(len(source))]


@pytest.fixture(scope="module")
def split_texts(corpus_dir) -> dict[str, list[str]]:
    splits = sources.prepare_dataset(corpus.NAME, corpus_dir)
    return {name: _texts(splits[name]) for name in splits}


@pytest.fixture(scope="module")
def collected() -> list[str]:
    return corpus.collect_documents()


def test_corpus_has_nonempty_disjoint_train_and_validation_splits(corpus_dir, split_texts):
    """Both splits exist, hold the number of records their metadata says, and share no text."""
    splits = sources.prepare_dataset(corpus.NAME, corpus_dir)
    assert sorted(splits) == ["train", "validation"]
    train, validation = split_texts["train"], split_texts["validation"]
    assert len(train) == splits.num_examples("train") > 0
    assert len(validation) == splits.num_examples("validation") > 0
    assert len(set(train)) == len(train)
    assert len(set(validation)) == len(validation)
    assert not set(train) & set(validation)


def test_validation_split_follows_is_validation_and_is_about_the_right_size(split_texts):
    """Each document lands in the split its hash picks; validation is ~VALIDATION_PERCENT."""
    train, validation = split_texts["train"], split_texts["validation"]
    assert all(corpus.is_validation(t) for t in validation)
    assert not any(corpus.is_validation(t) for t in train)
    percent = 100 * len(validation) / (len(train) + len(validation))
    assert corpus.VALIDATION_PERCENT / 2 < percent < corpus.VALIDATION_PERCENT * 2


def test_every_record_is_a_stripped_document_of_at_least_min_doc_chars(split_texts):
    """No empty, short or whitespace-padded records in either split."""
    for texts in split_texts.values():
        for text in texts:
            assert len(text) >= stdlib_docs.MIN_DOC_CHARS
            assert text == text.strip()


def test_corpus_holds_exactly_the_collected_documents(split_texts, collected):
    """The two splits together are the collected documents, none lost or added."""
    assert len(set(collected)) == len(collected)
    assert set(split_texts["train"]) | set(split_texts["validation"]) == set(collected)


def test_collect_documents_is_deterministic(collected):
    """A second child interpreter collects the same documents in the same order."""
    assert corpus.collect_documents() == collected


def test_collected_documents_start_with_the_long_pydoc_topics_in_name_order(collected):
    """pydoc topics come first in topic-name order, once each, none under MIN_DOC_CHARS."""
    topics = pydoc_data.topics.topics
    stripped = [topics[k].strip() for k in sorted(topics)]
    # dict.fromkeys keeps the first of equal texts (some topics share one text).
    expected = list(dict.fromkeys(t for t in stripped if len(t) >= stdlib_docs.MIN_DOC_CHARS))
    assert expected, "this Python ships no pydoc topics"
    assert collected[: len(expected)] == expected
    # Docstrings follow: there is more than the topics.
    assert len(collected) > len(expected)


def test_is_validation_is_a_pure_function_of_the_text():
    """Equal strings agree however they are built, in this and another interpreter."""
    texts = [f"document number {i} about the standard library" for i in range(2000)]
    ours = [corpus.is_validation(t) for t in texts]
    rebuilt = ["".join(list(t)) for t in texts]
    assert [corpus.is_validation(t) for t in rebuilt] == ours
    assert [corpus.is_validation(t) for t in texts] == ours
    # About VALIDATION_PERCENT of arbitrary texts are held out.
    assert 0.5 * corpus.VALIDATION_PERCENT < 100 * sum(ours) / len(ours)
    assert 100 * sum(ours) / len(ours) < 2 * corpus.VALIDATION_PERCENT

    # A child interpreter with a different string-hash seed gives the same answers.
    code = (
        "import json, sys\n"
        "from t5x_like.data import corpus\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps([corpus.is_validation(t) for t in texts]))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ours


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    snap = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            snap[path] = (st.st_mtime_ns, st.st_size)
    return snap


def test_building_again_into_the_same_data_dir_is_a_noop(corpus_dir, monkeypatch):
    """A second build (or prepare_dataset) neither collects documents nor touches a file."""
    before = _snapshot(corpus_dir)
    assert any(p.endswith(".array_record-00000-of-00001") for p in before)

    def fail():
        raise AssertionError("the corpus was collected again")

    monkeypatch.setattr(corpus, "collect_documents", fail)
    corpus.build(corpus_dir)
    sources.prepare_dataset(corpus.NAME, corpus_dir)
    assert _snapshot(corpus_dir) == before


def test_building_into_a_fresh_data_dir_gives_the_same_records(tmp_path, split_texts):
    """The stored record order does not depend on the build: a rebuild reads back identically."""
    corpus.build(str(tmp_path))
    splits = sources.prepare_dataset(corpus.NAME, str(tmp_path))
    assert _texts(splits["train"]) == split_texts["train"]
    assert _texts(splits["validation"]) == split_texts["validation"]


def test_module_names_are_sorted_public_and_skip_listed_modules():
    """The modules whose docstrings are collected: sorted, public, none from SKIP_MODULES."""
    names = stdlib_docs.module_names()
    assert names == sorted(names)
    assert {"json", "collections", "os"} <= set(names)
    assert not set(names) & stdlib_docs.SKIP_MODULES
    assert not any(n.startswith("_") for n in names)
    assert set(names) <= set(sys.stdlib_module_names)


def test_stdlib_docs_main_needs_an_output_path():
    """Run as a script without OUT.json it exits with a usage message."""
    with pytest.raises(SystemExit, match="usage"):
        stdlib_docs.main(["stdlib_docs.py"])
