"""Metrics of the fine-tuning tasks: classification, BIO tagging, extractive QA and ROUGE.

Every score is a fraction in [0, 1]. The reference implementations do the work where they exist:
scikit-learn (accuracy, precision/recall/F1, Matthews correlation), seqeval (entity-level F1
with BIO semantics) and rouge-score (ROUGE-1/2/L); they are in the `[eval]` extra and imported
when a metric is asked for. SQuAD exact match and F1 are written out here as the official
evaluation script (v2.0, which equals v1.1 whenever the gold answer is not empty) computes them.
`qa_predictions` turns per-window start/end logits into answer text (n-best spans over the
windows of each example, at most `max_answer_length` tokens).
"""

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

AVERAGES = ("binary", "macro", "micro")
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _check_pairs(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: they must pair up."
        )
    if not len(predictions):
        raise ValueError("No predictions to score.")


# ----------------------------------------------------------------------------- classification
def accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Fraction of predictions equal to their label (scikit-learn's `accuracy_score`)."""
    from sklearn.metrics import accuracy_score

    _check_pairs(predictions, labels)
    return float(accuracy_score(labels, predictions))


def precision_recall_f1(
    predictions: Sequence[Any],
    labels: Sequence[Any],
    *,
    average: str = "macro",
    positive_label: Any = 1,
) -> dict[str, float]:
    """Precision, recall and F1 (scikit-learn's `precision_recall_fscore_support`).

    Args:
      average: "binary" (of `positive_label` only), "macro" (unweighted mean over the classes
        seen in predictions or labels) or "micro" (from the pooled counts; equals accuracy for
        single-label classification).
      positive_label: the positive class of "binary".

    A class that is never predicted (or never true) has precision (recall) 0, not an error.
    """
    from sklearn.metrics import precision_recall_fscore_support

    _check_pairs(predictions, labels)
    if average not in AVERAGES:
        raise ValueError(f"average={average!r} is not one of {AVERAGES}.")
    p, r, f, _ = precision_recall_fscore_support(
        labels,
        predictions,
        average=average,
        pos_label=positive_label,
        zero_division=0.0,
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def matthews_corrcoef(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Matthews correlation (scikit-learn; multi-class as its R_K generalisation), in [-1, 1]:
    the one score here that is not a fraction; 0 when predictions or labels are constant."""
    from sklearn.metrics import matthews_corrcoef as sk_mcc

    _check_pairs(predictions, labels)
    return float(sk_mcc(labels, predictions))


def classification_metrics(
    predictions: Sequence[Any], labels: Sequence[Any], *, positive_label: Any = None
) -> dict[str, float]:
    """accuracy, macro and micro precision/recall/F1, and mcc; with `positive_label`, also the
    binary precision/recall/F1 of that class (GLUE's F1 for MRPC/QQP)."""
    out = {"accuracy": accuracy(predictions, labels)}
    for average in ("macro", "micro"):
        for name, value in precision_recall_f1(predictions, labels, average=average).items():
            out[f"{name}_{average}"] = value
    if positive_label is not None:
        binary = precision_recall_f1(
            predictions, labels, average="binary", positive_label=positive_label
        )
        out.update({f"{name}_binary": value for name, value in binary.items()})
    out["mcc"] = matthews_corrcoef(predictions, labels)
    return out


# ----------------------------------------------------------------------------- BIO tagging
def entity_metrics(
    predictions: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    *,
    strict: bool = False,
) -> dict[str, float]:
    """Entity-level precision/recall/F1 (micro over entities) and token accuracy of BIO tags.

    seqeval scores the entities: an entity counts only if its type and both ends match. By
    default with conlleval's semantics (an I- tag after O or another type opens an entity);
    `strict=True` uses seqeval's strict IOB2 mode, where such an I- tag is no entity.

    Args:
      predictions, references: one tag sequence per sentence (e.g. ["B-PER", "I-PER", "O"]),
        the two of each sentence of equal length.
    """
    from seqeval import metrics as sq
    from seqeval.scheme import IOB2

    _check_pairs(predictions, references)
    preds, refs = [list(p) for p in predictions], [list(r) for r in references]
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        if len(p) != len(r):
            raise ValueError(f"Sentence {i}: {len(p)} predicted tags but {len(r)} reference tags.")
    kwargs: dict[str, Any] = {"mode": "strict", "scheme": IOB2} if strict else {}
    return {
        "precision": float(sq.precision_score(refs, preds, zero_division=0, **kwargs)),
        "recall": float(sq.recall_score(refs, preds, zero_division=0, **kwargs)),
        "f1": float(sq.f1_score(refs, preds, zero_division=0, **kwargs)),
        "token_accuracy": float(sq.accuracy_score(refs, preds)),
    }


# ----------------------------------------------------------------------------- SQuAD
def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, punctuation removed, articles (a, an,
    the) removed, whitespace runs folded to single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact(prediction: str, gold: str) -> float:
    """1.0 if the normalised texts are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised texts; if either is empty, 1.0 iff both are."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Mean exact match and F1 over examples; each example scores its best gold answer.

    An example with no gold answers (unanswerable, SQuAD 2.0) is scored against "": only an
    empty prediction gets credit. Gold answers that normalise to "" are dropped first, as the
    official script does, unless all of them do.
    """
    _check_pairs(predictions, gold_answers)
    if isinstance(gold_answers[0], str):
        raise ValueError("gold_answers must hold a list of answer texts per example.")
    exact = f1 = 0.0
    for prediction, golds in zip(predictions, gold_answers, strict=True):
        golds = [g for g in golds if normalize_answer(g)] or [""]
        exact += max(squad_exact(prediction, g) for g in golds)
        f1 += max(squad_f1(prediction, g) for g in golds)
    return {"exact_match": exact / len(predictions), "f1": f1 / len(predictions)}


# ----------------------------------------------------------------------------- ROUGE
def rouge(
    predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = False
) -> dict[str, float]:
    """Mean rouge-score F-measures of ROUGE-1, ROUGE-2 and ROUGE-L (one reference each)."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(types, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: v / len(predictions) for t, v in totals.items()}


# ----------------------------------------------------------------------------- QA post-processing
class QAWindow(Protocol):
    """What post-processing reads of one window (see `data.qa_features.QAWindow`)."""

    example_id: str
    offsets: np.ndarray  # [L, 2] context character span of each token, (-1, -1) elsewhere.
    max_context: np.ndarray  # [L] bool: this window gives the token its widest context.


def qa_predictions(
    windows: Sequence[QAWindow],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    contexts: Mapping[str, str],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """The n-best answers of each example from its windows' logits (BERT's SQuAD recipe).

    In each window, the `n_best` highest start and end logits are paired into spans with
    start <= end, both on context tokens, at most `max_answer_length` tokens long, whose start
    token has its widest context in this window; a span scores start + end logit. The best
    spans over all windows of an example become text: the context from the start token's first
    character to the end token's last.

    Args:
      windows: one per row of the logits, each naming its example.
      start_logits, end_logits: [num_windows, L].
      contexts: example id -> its context text.
      null_threshold: None for SQuAD 1.1 (always an answer). Otherwise SQuAD 2.0: an example
        answers "" when its best null score (start + end logit of [CLS], over windows) exceeds
        the best span's score by more than this.

    Returns:
      example id -> [(answer text, score), ...], best first, at most `n_best`; the first is
      the prediction. An example with no valid span answers "".
    """
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if start_logits.shape != end_logits.shape or start_logits.shape[0] != len(windows):
        raise ValueError(
            f"Logits of shapes {start_logits.shape} and {end_logits.shape} do not match "
            f"{len(windows)} windows."
        )
    spans: dict[str, dict[tuple[int, int], float]] = collections.defaultdict(dict)
    null: dict[str, float] = {}
    for window, starts, ends in zip(windows, start_logits, end_logits, strict=True):
        eid = window.example_id
        null[eid] = max(null.get(eid, -np.inf), float(starts[0] + ends[0]))
        in_context = np.asarray(window.offsets)[:, 0] >= 0
        top_starts = np.argsort(-starts, kind="stable")[:n_best]
        top_ends = np.argsort(-ends, kind="stable")[:n_best]
        for s in top_starts:
            if not in_context[s] or not window.max_context[s]:
                continue
            for e in top_ends:
                if e < s or e - s + 1 > max_answer_length or not in_context[e]:
                    continue
                span = (int(window.offsets[s][0]), int(window.offsets[e][1]))
                score = float(starts[s] + ends[e])
                if score > spans[eid].get(span, -np.inf):
                    spans[eid][span] = score
    out: dict[str, list[tuple[str, float]]] = {}
    for eid in dict.fromkeys(w.example_id for w in windows):
        context = contexts[eid]
        ranked = sorted(spans[eid].items(), key=lambda kv: -kv[1])[:n_best]
        answers = [(context[a:b], score) for (a, b), score in ranked]
        best = answers[0][1] if answers else -np.inf
        if null_threshold is not None and null[eid] - best > null_threshold:
            answers = [("", null[eid])] + answers[: n_best - 1]
        out[eid] = answers or [("", null[eid])]
    return out
