"""The labelled docstrings dataset: features, summary/body split, kinds, splits, fine-tuning."""

import collections
import itertools
import sys

import pytest
from conftest import TEST_VOCAB_SIZE

from t5x_like.data import corpus, docstrings, pipeline, sources, stdlib_docs, vocab
from t5x_like.data.tasks import Task


def _decoded(source) -> list[dict[str, str]]:
    return [{k: v.decode("utf-8") for k, v in source[i].items()} for i in range(len(source))]


@pytest.fixture(scope="module")
def docstrings_dir(tmp_path_factory) -> str:
    """A data dir where prepare_dataset built the docstrings dataset on the spot."""
    data_dir = str(tmp_path_factory.mktemp("docstrings_tfds"))
    sources.prepare_dataset(docstrings.NAME, data_dir)
    return data_dir


@pytest.fixture(scope="module")
def records(docstrings_dir) -> dict[str, list[dict[str, str]]]:
    splits = sources.prepare_dataset(docstrings.NAME, docstrings_dir)
    return {split: _decoded(splits[split]) for split in splits}


@pytest.fixture(scope="module")
def corpus_texts(corpus_dir) -> dict[str, list[str]]:
    splits = sources.prepare_dataset(corpus.NAME, corpus_dir)
    return {s: [sources.record_text(splits[s][i]) for i in range(len(splits[s]))] for s in splits}


def test_records_have_the_documented_features(records):
    assert sorted(records) == ["train", "validation"]
    for split_records in records.values():
        assert split_records
        for r in split_records:
            assert set(r) == set(docstrings.FEATURES)
            assert r["kind"] in stdlib_docs.KINDS
            assert docstrings.split_summary(r["text"]) == (r["summary"], r["body"])
            assert len(r["body"]) >= docstrings.MIN_BODY_CHARS
            summary = r["summary"]
            assert docstrings.MIN_SUMMARY_CHARS <= len(summary) <= docstrings.MAX_SUMMARY_CHARS
            assert "\n" not in summary and summary == summary.strip()
            assert r["body"] == r["body"].strip() and r["body"] in r["text"]


def test_kinds_and_modules(records):
    """Every kind is represented in train; modules are top-level stdlib names."""
    train = records["train"]
    counts = collections.Counter(r["kind"] for r in train)
    print("train kinds:", counts.most_common())
    assert set(counts) == set(stdlib_docs.KINDS)
    for r in itertools.chain(*records.values()):
        if r["kind"] == "topic":
            assert r["module"] == "pydoc_data"
        else:
            assert "." not in r["module"] and r["module"] in sys.stdlib_module_names
    by_text = {r["text"]: r for r in train}
    # Spot checks of documents whose kind is certain.
    assert any(r["kind"] == "function" and r["module"] == "json" for r in train)
    assert any(r["kind"] == "method" and r["module"] == "collections" for r in train)
    assert any(r["kind"] == "class" for r in by_text.values())


def test_same_documents_and_splits_as_the_corpus(records, corpus_texts):
    """Each record is a corpus document in the same split; only unusable pairs are left out."""
    for split in ("train", "validation"):
        texts = [r["text"] for r in records[split]]
        assert len(set(texts)) == len(texts)
        assert all(corpus.is_validation(t) == (split == "validation") for t in texts)
        usable = {t for t in corpus_texts[split] if docstrings.split_summary(t) is not None}
        assert set(texts) == usable
    total = sum(len(v) for v in records.values())
    assert total > 0.8 * sum(len(v) for v in corpus_texts.values())


def test_split_summary_rules():
    body = "The body says more about it, across at least forty characters."
    # First sentence of the first paragraph; the rest of the paragraph starts the body.
    text = f"Return the thing.  It is\nuseful.\n\n{body}"
    assert docstrings.split_summary(text) == ("Return the thing.", f"It is\nuseful.\n\n{body}")
    # A summary over several lines is folded; e.g. does not end it.
    text = f"Return the thing, e.g. a list\nof items.\n\n{body}"
    assert docstrings.split_summary(text) == ("Return the thing, e.g. a list of items.", body)
    # Leading signatures are skipped.
    text = f"sorted(iterable, /) -> list\n--\n\nReturn a new sorted list.\n\n{body}"
    assert docstrings.split_summary(text) == ("Return a new sorted list.", body)
    text = f"B.find(sub[, start]) -> int\nB.find(x)\nFind sub in B.\n{body}"
    assert docstrings.split_summary(text) == ("Find sub in B.", body)
    # A pydoc topic: the underlined title.
    text = f"The assert statement\n********************\n\n{body}"
    assert docstrings.split_summary(text) == ("The assert statement", body)
    # Unusable: nothing after the summary, or a run-on first paragraph.
    assert docstrings.split_summary("Only a summary, and a long one at that, nothing else.") is None
    assert docstrings.split_summary("Short.\n\nToo short a body.") is None
    assert docstrings.split_summary("word " * 80 + f"\n\n{body}") is None


def test_build_all_collects_once_for_both_datasets(tmp_path, monkeypatch, records, corpus_texts):
    calls = []
    original = corpus.collect_records

    def counting():
        calls.append(1)
        return original()

    monkeypatch.setattr(corpus, "collect_records", counting)
    data_dir = str(tmp_path)
    docstrings.build_all(data_dir)
    assert len(calls) == 1
    built_corpus = sources.prepare_dataset(corpus.NAME, data_dir)
    built = sources.prepare_dataset(docstrings.NAME, data_dir)
    for split in ("train", "validation"):
        texts = [
            sources.record_text(built_corpus[split][i]) for i in range(len(built_corpus[split]))
        ]
        assert texts == corpus_texts[split]
        assert _decoded(built[split]) == records[split]
    docstrings.build_all(data_dir)  # Both there: nothing collected.
    assert len(calls) == 1


@pytest.mark.parametrize(
    "inputs_key,targets_key,prefix",
    [("body", "summary", "summarize: "), ("text", "kind", "classify: ")],
)
def test_fine_tuning_tasks_run_through_the_pipeline(
    docstrings_dir, corpus_dir, inputs_key, targets_key, prefix
):
    """Summary generation and kind classification as seq2seq batches."""
    v = vocab.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name=corpus.NAME, vocab_size=TEST_VOCAB_SIZE
    )
    task = Task(
        "seq2seq",
        inputs_len=64,
        targets_len=24,
        inputs_key=inputs_key,
        targets_key=targets_key,
        inputs_prefix=prefix,
    )
    source = sources.prepare_dataset(docstrings.NAME, docstrings_dir)["validation"]
    batches = list(pipeline.make_eval_iterator(source, v, task=task, batch_size=8, pack=False))
    assert len(batches) == -(-len(source) // 8)
    first = batches[0]
    assert v.decode(first["encoder_inputs"][0]).startswith(prefix.strip())
    expected = _decoded(source)[0][targets_key]
    decoded = v.decode(first["targets"][0])
    assert expected.startswith(decoded) or decoded == " ".join(expected.split())
    if targets_key == "kind":
        kinds = {
            v.decode(row)
            for b in batches
            for row, w in zip(b["targets"], b["weights"], strict=True)
            if w.any()
        }
        assert kinds <= set(stdlib_docs.KINDS)
