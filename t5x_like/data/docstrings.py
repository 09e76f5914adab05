"""A labelled fine-tuning dataset from the embedded corpus: docstrings with summary and kind.

The same documents as `t5x_like_corpus` (pydoc topics and standard-library docstrings, see
`stdlib_docs.py`), each split into a one-sentence `summary` and the rest, its `body`, and
labelled with its `kind` and top-level `module`. Nothing is downloaded. Two text-to-text tasks:

    summary generation  inputs_key="body", targets_key="summary", inputs_prefix="summarize: "
    classification      inputs_key="text", targets_key="kind",    inputs_prefix="classify: "

Features (all Text): `text` (the whole document, as in the corpus), `summary`, `body`, `kind`
(one of `stdlib_docs.KINDS`: topic, module, class, function, method) and `module`
("pydoc_data" for topics). The summary is the first sentence of the first paragraph, after
any leading call-signature lines ("bool(x) -> bool"), with its line breaks folded to spaces;
for a pydoc topic, whose first paragraph is an underlined title, it is the title. The body is
the text after the summary, formatting kept. Documents whose summary or body is too short or
whose summary is too long (no sentence end found) are left out. The train/validation split is
the corpus's (`corpus.is_validation` of the text), so no text is in different splits of the
two datasets.

    DocstringsDataset(data_dir=..., file_format="array_record").download_and_prepare()
"""

import hashlib
import re
import sys
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath

from t5x_like.data import corpus

NAME = "t5x_like_docstrings"
FEATURES = ("text", "summary", "body", "kind", "module")
# Bounds on what makes a usable (body -> summary) pair.
MIN_SUMMARY_CHARS = 3
MAX_SUMMARY_CHARS = 300
MIN_BODY_CHARS = 40

# "name(args)", "B.find(sub[, start]) -> int", "error(msg : string)": call signatures that
# C functions and some Python docstrings put before their summary.
_SIGNATURE = re.compile(r"^[A-Za-z_][\w.]*\(.*\)\s*(->.*)?$")
# An RST title underline, as under every pydoc topic's title.
_UNDERLINE = re.compile(r"^([*=\-~^#])\1{2,}$")
# A sentence ends at ., ! or ? followed by whitespace or the end of the paragraph.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# Abbreviations whose full stop ends no sentence.
_ABBREVIATIONS = ("e.g", "i.e", "cf", "vs")


def _first_sentence_end(paragraph: str) -> int:
    """Index just past the first sentence of `paragraph` (its length if none ends sooner)."""
    for match in _SENTENCE_END.finditer(paragraph):
        words = paragraph[: match.start()].split()
        if words and words[-1].lower().lstrip("(") in _ABBREVIATIONS:
            continue
        return match.end()
    return len(paragraph)


def split_summary(text: str) -> tuple[str, str] | None:
    """(summary, body) of a document, or None if it makes no usable pair (see module doc)."""
    lines = text.strip().splitlines(keepends=True)
    start = 0
    while start < len(lines) and (
        not lines[start].strip()
        or lines[start].strip() == "--"  # Separates an argument-clinic signature from the doc.
        or _SIGNATURE.match(lines[start].strip())
    ):
        start += 1
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    paragraph_lines = lines[start:end]
    rest = "".join(lines[end:])
    if len(paragraph_lines) == 2 and _UNDERLINE.match(paragraph_lines[1].strip()):
        summary, body = paragraph_lines[0], rest
    else:
        paragraph = "".join(paragraph_lines)
        cut = _first_sentence_end(paragraph)
        summary, body = paragraph[:cut], paragraph[cut:] + rest
    summary, body = " ".join(summary.split()), body.strip()
    if not MIN_SUMMARY_CHARS <= len(summary) <= MAX_SUMMARY_CHARS:
        return None
    if len(body) < MIN_BODY_CHARS:
        return None
    return summary, body


def to_examples(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """The dataset's examples from collected records (`corpus.collect_records()`), in order."""
    examples = []
    for record in records:
        pair = split_summary(record["text"])
        if pair is not None:
            summary, body = pair
            examples.append({**record, "summary": summary, "body": body})
    return examples


class DocstringsDataset(corpus.LocalBuilder):
    """Stdlib docstrings and pydoc topics with summary, body, kind and module."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Summary/body split, kind and module of each corpus document."}

    def __init__(self, *, records: list[dict[str, str]] | None = None, **kwargs):
        """`records`: already collected records to build from (None: collect them)."""
        self._records = records
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # See corpus.EmbeddedCorpus.code_path.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "Summary, body, kind and module of each pydoc topic and public standard-library "
                f"docstring of Python {sys.version_info.major}.{sys.version_info.minor}."
            ),
            features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FEATURES}),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download.
        records = self._records if self._records is not None else corpus.collect_records()
        examples = to_examples(records)
        return {
            "train": self._generate_examples(
                [e for e in examples if not corpus.is_validation(e["text"])]
            ),
            "validation": self._generate_examples(
                [e for e in examples if corpus.is_validation(e["text"])]
            ),
        }

    def _generate_examples(self, examples: list[dict[str, str]]) -> Iterator[tuple[str, dict]]:
        # Texts are distinct: their hashes are unique keys, and the stored order (by key hash)
        # does not depend on the collection order.
        for example in examples:
            key = hashlib.sha256(example["text"].encode("utf-8")).hexdigest()
            yield key, {k: example[k] for k in FEATURES}


def build(data_dir: str, records: list[dict[str, str]] | None = None) -> None:
    """Prepares the dataset as array_record under `data_dir` (a no-op when already there)."""
    builder = DocstringsDataset(data_dir=data_dir, file_format="array_record", records=records)
    corpus.prepare_quietly(builder)


def build_all(data_dir: str) -> None:
    """Prepares both embedded datasets under `data_dir` from one collection of the stdlib.

    Whichever is already there is left alone; nothing is collected if both are.
    """
    missing = [
        name
        for name, builder in ((corpus.NAME, corpus.EmbeddedCorpus), (NAME, DocstringsDataset))
        if not builder(data_dir=data_dir, file_format="array_record").is_prepared()
    ]
    if not missing:
        return
    records = corpus.collect_records()
    if corpus.NAME in missing:
        corpus.build(data_dir, documents=[r["text"] for r in records])
    if NAME in missing:
        build(data_dir, records=records)
