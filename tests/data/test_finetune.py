"""The fine-tuning tasks in the pipeline: Task checks, load_split's sources, and batches of the
row contract from make_train_iterator / make_eval_iterator with a real SentencePiece vocab."""

import json

import numpy as np
import pytest

from t5x_like.data import builtin_tasks, corpus, featurize, finetune, pipeline, qa_features, vocab
from t5x_like.data.tasks import Task


@pytest.fixture(scope="module")
def records():
    return corpus.collect_records()


@pytest.fixture(scope="module")
def sp_vocab(records):
    """A small SentencePiece vocabulary with [CLS], [SEP], [MASK] as its 3 extra ids."""
    texts = [r["text"] for r in records[:400]]
    proto = vocab.train_sentencepiece(texts, vocab_size=300, max_chars=200_000)
    return vocab.SentencePieceVocab(proto, extra_ids=3)


def test_task_checks():
    assert Task("question_answering", seq_len=128).features["start_positions"] == 1
    with pytest.raises(ValueError, match="data.seq_len must be an integer >= 3"):
        Task("classification", seq_len=2)
    with pytest.raises(ValueError, match=r"data.doc_stride=32 is more than the 29 context"):
        Task("question_answering", seq_len=96, max_query_len=64)
    with pytest.raises(ValueError, match="data.seq_len=40 leaves no context"):
        Task("question_answering", seq_len=40, max_query_len=64, doc_stride=1)
    tagging = Task("token_classification", seq_len=32).features
    assert tagging["targets"] == tagging["weights"] == 32


def test_load_split_sources(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"s": t, "y": y}) + "\n" for t, y in [("a", "x"), ("b", "y")])
    )
    (tmp_path / "validation.jsonl").write_text(json.dumps({"s": "c", "y": "y"}) + "\n")
    cfg = {"task": "classification", "dataset": str(tmp_path), "text_key": "s", "label_key": "y"}
    train = finetune.load_split(cfg, "train")
    validation = finetune.load_split(cfg, "validation", labels=train.labels)
    assert train.labels == validation.labels == ("x", "y")
    assert validation.encoded() == [{"text": "c", "text_b": None, "label": 1}]
    single = dict(cfg, dataset=str(tmp_path / "train.jsonl"))
    assert finetune.load_split(single, "train").examples == train.examples
    with pytest.raises(ValueError, match="one file, split 'train' only"):
        finetune.load_split(single, "validation")
    with pytest.raises(FileNotFoundError, match="No test.jsonl, test.csv or test.tsv"):
        finetune.load_split(cfg, "test")
    with pytest.raises(ValueError, match="is a qa task, not data.task='classification'"):
        finetune.load_split(dict(cfg, dataset="builtin:module_qa"), "train")


def _batches(task, source, sp_vocab, n=2, batch_size=4):
    it = pipeline.make_train_iterator(source, sp_vocab, task=task, batch_size=batch_size, seed=0)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize(
    "task_name, builtin",
    [
        ("classification", "same_document"),
        ("token_classification", "code_tags"),
        ("question_answering", "module_qa"),
    ],
)
def test_pipeline_rows(task_name, builtin, records, sp_vocab):
    data = builtin_tasks.make_task(builtin, records)
    task = Task(task_name, seq_len=96, doc_stride=16, max_query_len=16)
    source = data["train"].encoded()
    shapes = pipeline.batch_shapes(task, 4)
    for batch in _batches(task, source, sp_vocab):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == shapes
        assert (batch["inputs"][:, 0] == sp_vocab.cls_id).all()
        assert ((batch["inputs"] == sp_vocab.sep_id).sum(1) >= 1).all()
        real = batch["segment_ids"] == 1
        assert (batch["inputs"][~real] == 0).all() and real.sum(1).min() > 2
    if task_name == "classification":
        assert ((batch["token_type_ids"] == 1).sum(1) > 0).all()  # Sentence pairs.
        assert set(batch["label"][:, 0]) <= {0, 1}
    # Evaluation: one pass in record order, the same rows as featurizing each example.
    validation = data["validation"].encoded()
    it = pipeline.make_eval_iterator(validation, sp_vocab, task=task, batch_size=8)
    rows = np.concatenate([b["inputs"] for b in it])
    special = featurize.SpecialIds.from_vocab(sp_vocab)
    if task_name == "question_answering":
        expected, _ = qa_features.qa_dataset(
            validation, sp_vocab.encode, special, 96, doc_stride=16, max_query_len=16
        )
        expected = expected["inputs"]
    elif task_name == "classification":
        expected = [
            featurize.classification_row(e, sp_vocab.encode, special, 96, None)["inputs"]
            for e in validation
        ]
    else:
        expected = [
            featurize.tagging_row(e, sp_vocab.encode, special, 96, None)["inputs"]
            for e in validation
        ]
    expected = np.asarray(expected)
    np.testing.assert_array_equal(rows[: len(expected)], expected)
    assert (rows[len(expected) :] == 0).all()  # The last batch's padding rows.


def test_fields_from_config_over_a_known_tfds_dataset():
    from t5x_like.data import labelled

    defaults = {
        "text_key": "text",
        "text_b_key": "",
        "label_key": "label",
        "question_key": "question",
    }
    mrpc = finetune.fields_from_config(defaults, labelled.tfds_fields("glue/mrpc:2.0.0"))
    assert (mrpc.text, mrpc.text_b, mrpc.label) == ("sentence1", "sentence2", "label")
    assert labelled.tfds_fields("squad/v2.0") == labelled.TFDS_FIELDS["squad"]
    custom = finetune.fields_from_config(
        dict(defaults, text_key="s"), labelled.tfds_fields("glue/mrpc")
    )
    assert (custom.text, custom.text_b) == ("s", "sentence2")
    assert finetune.fields_from_config({"text_b_key": "h"}).text_b == "h"
