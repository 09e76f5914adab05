"""Metrics of decoded text against references: accuracy, exact match and BLEU (sacrebleu).

`accuracy` compares strings as they are (the text-to-text classification metric); `exact_match`
compares them after SQuAD-style normalisation (case, punctuation, articles, whitespace); `bleu`
is sacrebleu's corpus BLEU with its default 13a tokenisation. All are fractions in [0, 1], the
unit of every rate this codebase logs (token accuracy, MFU): BLEU 0.273 is sacrebleu's 27.3.
"""

import re
import string
from collections.abc import Sequence

import sacrebleu

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: they must pair up."
        )
    if not predictions:
        raise ValueError("No predictions to score.")


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference (surrounding whitespace ignored)."""
    _check_lengths(predictions, references)
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after `normalize_answer`."""
    _check_lengths(predictions, references)
    hits = sum(
        normalize_answer(p) == normalize_answer(r)
        for p, r in zip(predictions, references, strict=True)
    )
    return hits / len(predictions)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU of the predictions against one reference each, as a fraction
    (sacrebleu's score / 100)."""
    _check_lengths(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score) / 100.0


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """accuracy, exact_match and bleu of the predictions, fractions in [0, 1]."""
    return {
        "accuracy": accuracy(predictions, references),
        "exact_match": exact_match(predictions, references),
        "bleu": bleu(predictions, references),
    }
