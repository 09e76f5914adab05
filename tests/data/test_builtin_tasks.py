"""Built-in labelled tasks from the embedded corpus: deterministic, split like the corpus,
well-formed for their head, with baselines that leave room to learn (checked against the
task metrics)."""

import collections

import numpy as np
import pytest

from t5x_like.data import builtin_tasks, corpus, featurize, qa_features
from t5x_like.evaluation import task_metrics


@pytest.fixture(scope="module")
def records():
    return corpus.collect_records()


@pytest.fixture(scope="module")
def tasks(records):
    return {name: builtin_tasks.make_task(name, records) for name in builtin_tasks.TASKS}


def _texts(name, data):
    keys = {"classification": ("text", "text_b"), "tagging": ("tokens",), "qa": ("context",)}
    return [str([e[k] for k in keys[builtin_tasks.TASKS[name]]]) for e in data.examples]


def test_deterministic_across_collections(tasks):
    """A second collection of the standard library gives the very same tasks."""
    again = {name: builtin_tasks.make_task(name) for name in builtin_tasks.TASKS}
    assert again == tasks


def test_splits_are_the_corpus_splits(tasks):
    for name, splits in tasks.items():
        assert set(splits) == {"train", "validation"}
        train, validation = (set(_texts(name, splits[s])) for s in ("train", "validation"))
        assert len(train) > 5 * len(validation) > 0
        if name != "module_qa":  # Validation holds no input seen in train.
            assert not train & validation
    for data in tasks["code_tags"].values():
        assert all(len(e["tokens"]) <= builtin_tasks.MAX_TAG_WORDS for e in data.examples)


def test_split_examples_follow_the_corpus(records):
    docs = builtin_tasks.split_examples(records)
    for split, examples in docs.items():
        assert all(corpus.is_validation(d["text"]) == (split == "validation") for d in examples)


def test_classification_tasks(tasks):
    for name in ("docstring_kind", "same_document"):
        train, validation = tasks[name]["train"], tasks[name]["validation"]
        assert train.labels == validation.labels
        counts = collections.Counter(e["label"] for e in train.examples)
        assert len(counts) >= 2 and set(counts) == set(train.labels)
        base = builtin_tasks.baseline(name, tasks[name])
        majority = counts.most_common(1)[0][0]
        labels = [e["label"] for e in validation.examples]
        expected = task_metrics.accuracy([majority] * len(labels), labels)
        assert base == {"accuracy": pytest.approx(expected)}
        assert base["accuracy"] < 0.6
        print(name, dict(counts), base)
    assert tasks["docstring_kind"]["train"].labels == (
        "class",
        "function",
        "method",
        "module",
        "topic",
    )
    pairs = tasks["same_document"]["train"].examples
    assert all(e["text_b"] for e in pairs)


def test_code_tags_rule():
    words = [
        "Use",
        "'os.path.join()'",
        "or",
        "`a",
        "b`",
        "with",
        "None,",
        "for",
        "x_y",
        "Obj.attr.",
    ]
    assert builtin_tasks.code_tags(words) == [
        "O", "B-CODE", "O", "B-CODE", "I-CODE", "O", "B-KW", "O", "B-CODE", "B-CODE",
    ]  # fmt: skip
    assert builtin_tasks.code_tags(["'unclosed", "quote", "here"]) == ["O", "O", "O"]


def test_tagging_task(tasks):
    data = tasks["code_tags"]
    assert data["train"].labels == ("O", "B-CODE", "I-CODE", "B-KW", "I-KW")
    tags = collections.Counter(t for e in data["train"].examples for t in e["tags"])
    assert tags["B-CODE"] > 100 and tags["B-KW"] > 50 and tags["I-CODE"] > 10
    base = builtin_tasks.baseline("code_tags", data)
    refs = [e["tags"] for e in data["validation"].examples]
    always_o = task_metrics.entity_metrics([["O"] * len(r) for r in refs], refs)
    assert base == {"token_accuracy": pytest.approx(always_o["token_accuracy"]), "entity_f1": 0.0}
    assert always_o["f1"] == 0.0 and 0.5 < base["token_accuracy"] < 1.0


def test_qa_task(tasks):
    for data in tasks["module_qa"].values():
        ids = [e["id"] for e in data.examples]
        assert len(set(ids)) == len(ids)
        for e in data.examples:
            for a in e["answers"]:
                assert e["context"][a["start"] : a["start"] + len(a["text"])] == a["text"]
            # The question's module is in the context iff the question has an answer.
            module = e["question"].rsplit(" in ", 1)[1].removesuffix(" do?")
            assert (f"In {module}, a " in e["context"]) == bool(e["answers"])
    base = builtin_tasks.baseline("module_qa", tasks["module_qa"])
    validation = tasks["module_qa"]["validation"].examples
    golds = [[a["text"] for a in e["answers"]] for e in validation]
    empty = task_metrics.squad_metrics([""] * len(golds), golds)
    assert base == pytest.approx(empty) and base["f1"] == pytest.approx(0.2)


def test_tasks_make_rows(tasks):
    """Every example of each task becomes rows of the head's contract."""
    vocab = {}

    def encode(text):  # One id per character class of each word: enough to build rows.
        return [vocab.setdefault(w, 10 + len(vocab) % 200) for w in text.split()]

    special = featurize.SpecialIds(cls=1, sep=2)
    for name in ("docstring_kind", "same_document"):
        data = tasks[name]["validation"]
        rows = [
            featurize.classification_row(e, encode, special, 64, data.label_ids)
            for e in data.examples
        ]
        assert {int(r["label"][0]) for r in rows} == set(range(len(data.labels)))
    data = tasks["code_tags"]["validation"]
    for e in data.examples:
        row = featurize.tagging_row(e, encode, special, 64, data.label_ids)
        assert row["weights"].sum() == len(e["tokens"])
    features, windows = qa_features.qa_dataset(
        tasks["module_qa"]["validation"].examples, encode, special, 64, doc_stride=16
    )
    answerable = sum(bool(e["answers"]) for e in tasks["module_qa"]["validation"].examples)
    assert np.count_nonzero(features["start_positions"]) >= answerable * 0.9
    assert len(windows) == features["inputs"].shape[0]


def test_classification_tasks_are_learnable(tasks):
    """Simple scikit-learn models clear the majority baseline on the validation split: the
    labels follow from the inputs (a fine-tuned encoder has a margin to show)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    data = tasks["docstring_kind"]
    train, validation = data["train"].examples, data["validation"].examples
    words = CountVectorizer(ngram_range=(1, 2), min_df=2).fit([e["text"] for e in train])
    model = LogisticRegression(max_iter=2000).fit(
        words.transform([e["text"] for e in train]), [e["label"] for e in train]
    )
    predictions = model.predict(words.transform([e["text"] for e in validation]))
    accuracy = task_metrics.accuracy(list(predictions), [e["label"] for e in validation])
    baseline = builtin_tasks.baseline("docstring_kind", data)["accuracy"]
    print(f"docstring_kind: bag of words {accuracy:.3f}, majority {baseline:.3f}")
    assert accuracy > baseline + 0.2

    def overlap(e):  # Shared words of the two sentences.
        a, b = set(e["text"].lower().split()), set(e["text_b"].lower().split())
        return [len(a & b) / max(1, len(a | b)), len(a & b)]

    data = tasks["same_document"]
    train, validation = data["train"].examples, data["validation"].examples
    model = LogisticRegression().fit([overlap(e) for e in train], [e["label"] for e in train])
    predictions = model.predict([overlap(e) for e in validation])
    accuracy = task_metrics.accuracy(list(predictions), [e["label"] for e in validation])
    baseline = builtin_tasks.baseline("same_document", data)["accuracy"]
    print(f"same_document: word overlap {accuracy:.3f}, majority {baseline:.3f}")
    assert accuracy > baseline + 0.1
