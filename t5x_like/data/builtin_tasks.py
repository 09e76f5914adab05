"""Small labelled tasks made from the embedded corpus, one or more per fine-tuning head.

All come from the labelled docstrings (`docstrings.to_examples` of `corpus.collect_records()`:
summary, body, kind, module of each standard-library docstring or pydoc topic), offline and
deterministic: the train/validation split is the corpus's (`corpus.is_validation` of the
text), and the order within a split is by SHA-256 of the text.

    docstring_kind  classification  a summary sentence -> the kind of what it documents
                                    (topic, module, class, function, method)
    same_document   classification  (summary, first body sentence) pair -> "yes" if both come
                                    from one docstring, "no" if the sentence is the next one's
    code_tags       tagging         the document's first words, BIO-tagged: CODE (a quoted
                                    span, or an identifier with _ . or ()) and KW (None, True,
                                    False and Python keywords that are no English words)
    module_qa       qa              context "In json, a function: <summary> In os, ...", four
                                    documents of different modules; question "What does the
                                    function in json do?" -> its summary; one question in five
                                    names a module the context lacks (no answer, SQuAD 2.0)

`baseline(name, data)` is the figure a model must beat: the train-majority label's accuracy,
always-O's token accuracy (entity F1 0), or the empty answer's exact match / F1.
"""

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from t5x_like.data import corpus, docstrings
from t5x_like.data.labelled import LabelledData, finish

TASKS = {
    "docstring_kind": "classification",
    "same_document": "classification",
    "code_tags": "tagging",
    "module_qa": "qa",
}
SPLITS = ("train", "validation")
# Words of a document that code_tags keeps (rows of 128 pieces hold them).
MAX_TAG_WORDS = 40
# Documents per module_qa context.
QA_DOCS_PER_CONTEXT = 4
# Keywords that are no English words (those that are, "for", "in", "is", ..., stay O).
KEYWORDS = frozenset(
    {
        "None",
        "True",
        "False",
        "lambda",
        "yield",
        "def",
        "elif",
        "nonlocal",
        "del",
        "assert",
        "async",
        "await",
    }
)
_QUOTES = "'\"`"
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*(\(\))?$")
_TRAILING = ",.;:!?)"
_QUOTED_MAX_WORDS = 4


def _order(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_examples(records: Sequence[dict[str, str]] | None = None) -> dict[str, list[dict]]:
    """The labelled docstrings by split, each ordered by text hash."""
    if records is None:
        records = corpus.collect_records()
    examples = sorted(docstrings.to_examples(list(records)), key=lambda e: _order(e["text"]))
    return {
        "train": [e for e in examples if not corpus.is_validation(e["text"])],
        "validation": [e for e in examples if corpus.is_validation(e["text"])],
    }


def _first_sentence(text: str) -> str:
    paragraph = " ".join(text.split("\n\n")[0].split())
    return paragraph[: docstrings._first_sentence_end(paragraph)]


def _is_code_word(word: str) -> bool:
    core = word.rstrip(_TRAILING)
    if not _IDENTIFIER.match(core):
        return False
    return "_" in core.strip("_") or "." in core or core.endswith("()")


def code_tags(words: Sequence[str]) -> list[str]:
    """BIO tags of `words` (see the module docstring): quoted spans of at most four words and
    identifier-like words are CODE, `KEYWORDS` are KW."""
    tags = ["O"] * len(words)
    i = 0
    while i < len(words):
        word = words[i]
        if word[0] in _QUOTES:
            quote = word[0]
            for j in range(i, min(i + _QUOTED_MAX_WORDS, len(words))):
                closing = words[j].rstrip(_TRAILING)
                if len(closing) > (1 if j == i else 0) and closing.endswith(quote):
                    tags[i : j + 1] = ["B-CODE"] + ["I-CODE"] * (j - i)
                    i = j + 1
                    break
            else:
                i += 1
            continue
        if word.rstrip(_TRAILING) in KEYWORDS:
            tags[i] = "B-KW"
        elif _is_code_word(word):
            tags[i] = "B-CODE"
        i += 1
    return tags


def _classification(name: str, docs: list[dict]) -> list[dict[str, Any]]:
    if name == "docstring_kind":
        return [{"text": d["summary"], "text_b": None, "label": d["kind"]} for d in docs]
    out = []
    for i, doc in enumerate(docs):
        other = docs[(i + 1) % len(docs)] if i % 2 else doc  # Odd: the next document's.
        out.append(
            {
                "text": doc["summary"],
                "text_b": _first_sentence(other["body"]),
                "label": "no" if i % 2 else "yes",
            }
        )
    return out


def _qa(docs: list[dict], split: str) -> list[dict[str, Any]]:
    groups: list[list[dict]] = []
    for doc in docs:  # Greedy: the first open group without this module.
        for group in groups:
            if len(group) < QA_DOCS_PER_CONTEXT and all(
                d["module"] != doc["module"] for d in group
            ):
                group.append(doc)
                break
        else:
            groups.append([doc])
    groups = [g for g in groups if len(g) == QA_DOCS_PER_CONTEXT]
    examples = []
    for g, group in enumerate(groups):
        parts, answers = [], []
        length = 0
        for doc in group:
            intro = f"In {doc['module']}, a {doc['kind']}: "
            answers.append((doc, length + len(intro)))
            part = intro + doc["summary"]
            parts.append(part)
            length += len(part) + 1
        context = " ".join(parts)
        for k, (doc, start) in enumerate(answers):
            examples.append(
                {
                    "id": f"{split}-{g}-{k}",
                    "question": f"What does the {doc['kind']} in {doc['module']} do?",
                    "context": context,
                    "answers": [{"text": doc["summary"], "start": start}],
                }
            )
        modules = {d["module"] for d in group}
        absent = next(
            d
            for h in range(1, len(groups))
            for d in groups[(g + h) % len(groups)]
            if d["module"] not in modules
        )
        examples.append(
            {
                "id": f"{split}-{g}-none",
                "question": f"What does the {absent['kind']} in {absent['module']} do?",
                "context": context,
                "answers": [],
            }
        )
    return examples


def _input_key(example: dict[str, Any]) -> tuple:
    """What a model sees of an example (its text or tokens, not its label)."""
    return tuple(str(v) for k, v in sorted(example.items()) if k not in ("label", "tags"))


def make_task(
    name: str, records: Sequence[dict[str, str]] | None = None
) -> dict[str, LabelledData]:
    """The splits of built-in task `name` ("train", "validation"), as `labelled.read_file`
    would return them; `records` are `corpus.collect_records()`'s (None: collect them)."""
    if name not in TASKS:
        raise ValueError(f"Built-in task {name!r} is not one of {sorted(TASKS)}.")
    kind = TASKS[name]
    docs = split_examples(records)
    labels = None
    if name == "docstring_kind":
        labels = sorted({d["kind"] for d in docs["train"]})
    out = {}
    for split in SPLITS:
        if kind == "classification":
            examples = _classification(name, docs[split])
        elif kind == "tagging":
            examples = []
            for d in docs[split]:
                words = d["text"].split()[:MAX_TAG_WORDS]
                examples.append({"tokens": words, "tags": code_tags(words)})
        else:
            examples = _qa(docs[split], split)
        if split != "train" and kind != "qa":
            # Different documents can share a summary ("Initialize self."): validation keeps
            # only inputs that train lacks, so it measures generalisation, not recall.
            seen = {_input_key(e) for e in out["train"].examples}
            examples = [e for e in examples if _input_key(e) not in seen]
        where = f"built-in task {name}[{split}]"
        out[split] = finish(kind, ((where, e) for e in examples), labels, where)
        if kind != "qa":  # Validation uses the train split's label set.
            labels = out[split].labels
    return out


def baseline(name: str, data: dict[str, LabelledData]) -> dict[str, float]:
    """The no-model baseline on the validation split (fractions in [0, 1]).

    classification: {"accuracy"} of always predicting the train split's most common label;
    tagging: {"token_accuracy"} of always-O over words, {"entity_f1": 0.0};
    qa: {"exact_match", "f1"} of always answering "" (the unanswerable fraction).
    """
    kind = TASKS[name]
    validation = data["validation"].examples
    if kind == "classification":
        majority = Counter(e["label"] for e in data["train"].examples).most_common(1)[0][0]
        hits = sum(e["label"] == majority for e in validation)
        return {"accuracy": hits / len(validation)}
    if kind == "tagging":
        tags = [t for e in validation for t in e["tags"]]
        return {"token_accuracy": tags.count("O") / len(tags), "entity_f1": 0.0}
    empty = sum(not e["answers"] for e in validation) / len(validation)
    return {"exact_match": empty, "f1": empty}
