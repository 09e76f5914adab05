"""The task metrics of a fine-tuning run (classification, BIO tagging, extractive QA).

The model runs on the eval split's rows through the family adapter (`apply` for the head's
logits, `loss_targets` for the rows' targets and weights), the predictions go to
`evaluation.task_metrics` (scikit-learn, seqeval, SQuAD EM/F1), and the scores come back as
fractions named `task_*`, next to the teacher-forced loss and accuracy:

    classification        task_accuracy, task_{precision,recall,f1}_macro, task_mcc
                          (+ task_{precision,recall,f1}_binary of label id 1 with 2 labels)
    token_classification  task_entity_{precision,recall,f1} (seqeval), task_token_accuracy
                          (over words: each word's first piece carries its tag)
    question_answering    task_exact_match, task_f1 (windows -> `qa_predictions` n-best,
                          SQuAD 2.0's null answer when the data has unanswerable questions)

Other tasks have no task metrics (`applies` is False).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from t5x_like import partitioning
from t5x_like.data import featurize, finetune, qa_features
from t5x_like.evaluation import task_metrics

# SQuAD post-processing (BERT's run_squad defaults).
N_BEST = 20
MAX_ANSWER_LENGTH = 30


def applies(exp: Any) -> bool:
    """Whether the experiment's task has task metrics (a fine-tuning task)."""
    return exp.task.name in finetune.TASK_KINDS


def jit_predict(exp: Any, param_shardings: Any) -> Any:
    """(params, global batch) -> (logits [B, T, C] float32, targets [B, T], weights [B, T]),
    replicated: the head's logits as `apply` gives them and what they are scored against."""
    family, module, rules = exp.family, exp.model, exp.rules

    def predict(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        with nn.logical_axis_rules(rules):
            logits = family.apply(module, params, batch, deterministic=True)
        targets, weights = family.loss_targets(batch)
        return logits.astype(jnp.float32), targets, weights

    rep = partitioning.replicated(exp.mesh)
    return jax.jit(predict, in_shardings=(param_shardings, exp.batch_sharding), out_shardings=rep)


def collect(exp: Any, predict: Any, params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, targets, weights) of every eval row, in the eval iterator's order."""
    from t5x_like.experiment.assembly import make_eval_iterator

    out: list[tuple[np.ndarray, ...]] = []
    for local_batch in make_eval_iterator(exp):
        batch = partitioning.global_batch(local_batch, exp.batch_sharding)
        out.append(tuple(np.asarray(x) for x in jax.device_get(predict(params, batch))))
    return tuple(np.concatenate([o[i] for o in out]) for i in range(3))  # type: ignore[return-value]


def classification(
    logits: np.ndarray, targets: np.ndarray, weights: np.ndarray, num_labels: int
) -> dict[str, float]:
    """Task metrics of classification rows (logits [N, 1, C], targets and weights [N, 1])."""
    keep = weights[:, 0] > 0
    preds, labels = logits[keep, 0].argmax(-1).tolist(), targets[keep, 0].tolist()
    scores = task_metrics.classification_metrics(
        preds, labels, positive_label=1 if num_labels == 2 else None
    )
    return {f"task_{k}": v for k, v in scores.items() if not k.endswith("_micro")}


def tag_sequences(
    logits: np.ndarray, targets: np.ndarray, weights: np.ndarray, tags: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """(predicted, gold) tag names of each tagging row's words (its weighted first pieces)."""
    preds, golds = [], []
    for row_logits, row_targets, row_weights in zip(logits, targets, weights, strict=True):
        if not (row_weights > 0).any():
            continue  # A padding row.
        predicted = featurize.word_predictions(row_weights, row_logits.argmax(-1))
        preds.append([tags[p] for p in predicted])
        golds.append([tags[t] for t in featurize.word_predictions(row_weights, row_targets)])
    return preds, golds


def tagging(
    logits: np.ndarray, targets: np.ndarray, weights: np.ndarray, tags: Sequence[str]
) -> dict[str, float]:
    """Task metrics of tagging rows (logits [N, L, C], targets and weights [N, L])."""
    preds, golds = tag_sequences(logits, targets, weights, tags)
    scores = task_metrics.entity_metrics(preds, golds)
    out = {f"task_entity_{k}": scores[k] for k in ("precision", "recall", "f1")}
    out["task_token_accuracy"] = scores["token_accuracy"]
    return out


def qa_answers(
    exp: Any, examples: Sequence[dict[str, Any]], logits: np.ndarray
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(id -> predicted answer, the examples all of whose windows `logits` [N, 2, L] cover)."""
    task = exp.task
    special = featurize.SpecialIds.from_vocab(exp.vocab)
    windows: list[qa_features.QAWindow] = []
    complete = []
    for example in examples:
        rows = qa_features.qa_windows(
            example,
            exp.vocab.encode,
            special,
            task.seq_len,
            doc_stride=task.doc_stride,
            max_query_len=task.max_query_len,
            encode_offsets=getattr(exp.vocab, "encode_with_offsets", None),
        )
        if len(windows) + len(rows) > len(logits):
            break  # train.eval_batches stopped inside this example.
        windows += [w for _, w in rows]
        complete.append(example)
    if not complete:
        return {}, []
    contexts, _ = qa_features.references(complete)
    unanswerable = any(not e["answers"] for e in examples)
    nbest = task_metrics.qa_predictions(
        windows,
        logits[: len(windows), 0],
        logits[: len(windows), 1],
        contexts,
        n_best=N_BEST,
        max_answer_length=MAX_ANSWER_LENGTH,
        null_threshold=0.0 if unanswerable else None,
    )
    return {eid: answers[0][0] for eid, answers in nbest.items()}, complete


def question_answering(
    exp: Any, examples: Sequence[dict[str, Any]], logits: np.ndarray, weights: np.ndarray
) -> dict[str, float]:
    """SQuAD exact match and F1 of the eval examples from their windows' logits [N, 2, L]."""
    real = logits[weights[:, 0] > 0]  # Padding rows (weight 0) come last.
    answers, complete = qa_answers(exp, examples, real)
    if not complete:
        return {}
    _, golds = qa_features.references(complete)
    ids = [str(e["id"]) for e in complete]
    scores = task_metrics.squad_metrics([answers[i] for i in ids], [golds[i] for i in ids])
    return {f"task_{k}": v for k, v in scores.items()}


def evaluate(exp: Any, predict: Any, params: Any) -> dict[str, float]:
    """The task metrics of `params` on the experiment's eval split ({} for other tasks)."""
    if not applies(exp):
        return {}
    logits, targets, weights = collect(exp, predict, params)
    name = exp.task.name
    if name == "classification":
        return classification(logits, targets, weights, exp.cfg.model.num_labels)
    if name == "token_classification":
        return tagging(logits, targets, weights, exp.splits.labels)
    if jax.process_count() > 1:
        # Rows of several processes interleave in the global batch: no window order to follow.
        logging.warning("QA task metrics are computed in single-process runs only.")
        return {}
    examples = exp.splits.data[exp.cfg.data.eval_split].examples
    return question_answering(exp, examples, logits, weights)


# ----------------------------------------------------------------------------- text in
MASK = "[MASK]"


def mask_markers(vocab: Any) -> tuple[str, ...]:
    """What a fill-mask prompt may write for a mask: "[MASK]", and the tokenizer's own mask
    token where it has another (RoBERTa's "<mask>")."""
    own = getattr(vocab, "mask_token", MASK)
    return (MASK,) if own == MASK else (MASK, own)


def _split_masks(text: str, markers: Sequence[str]) -> list[str]:
    """`text` split at each mask marker."""
    return re.split("|".join(map(re.escape, markers)), text)


def _mlm_row(vocab: Any, text: str, seq_len: int, special: featurize.SpecialIds) -> dict:
    """[CLS] text [SEP] with each mask marker of `text` as the tokenizer's mask id. The text
    before a mask loses its trailing spaces (transformers' mask tokens absorb the space before
    them: a byte-level BPE would otherwise encode it as a token of its own)."""
    tokens: list[int] = []
    parts = _split_masks(text, mask_markers(vocab))
    for i, part in enumerate(parts):
        if i:
            tokens.append(vocab.mask_id)
        if i + 1 < len(parts):
            part = part.rstrip()
        tokens += vocab.encode(part) if part.strip() else []
    if len(tokens) + 2 > seq_len:
        raise ValueError(f"{text[:40]!r}...: {len(tokens) + 2} tokens, more than data.seq_len.")
    return featurize.encoder_row(tokens, None, seq_len, special)


def _qa_example(prompt: str, index: int) -> dict[str, Any]:
    try:
        record = json.loads(prompt)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not {"question", "context"} <= set(record):
        raise ValueError(
            f"Prompt {index + 1}: a question-answering model takes a JSON object "
            '{"question": "...", "context": "..."} per prompt.'
        )
    return {
        "id": str(index),
        "question": record["question"],
        "context": record["context"],
        "answers": [],
    }


def _rows(exp: Any, prompts: Sequence[str]) -> tuple[list[dict], list[Any]]:
    """(rows, what each prompt needs to read its rows' outputs) of the task's kind."""
    task, vocab = exp.task, exp.vocab
    special = featurize.SpecialIds.from_vocab(vocab)
    rows: list[dict] = []
    meta: list[Any] = []
    for i, prompt in enumerate(prompts):
        if task.name == "mlm":
            rows.append(_mlm_row(vocab, prompt, task.seq_len, special))
            meta.append(1)
        elif task.name == "classification":
            text, _, text_b = prompt.partition("\t")  # A tab separates a sentence pair.
            example = {"text": text, "text_b": text_b or None, "label": 0}
            rows.append(
                featurize.classification_row(example, vocab.encode, special, task.seq_len, None)
            )
            meta.append(1)
        elif task.name == "token_classification":
            words = prompt.split()
            example = {"tokens": words, "tags": [0] * len(words)}
            rows.append(featurize.tagging_row(example, vocab.encode, special, task.seq_len, None))
            meta.append(words)
        elif task.name == "question_answering":
            example = _qa_example(prompt, i)
            windows = qa_features.qa_windows(
                example,
                vocab.encode,
                special,
                task.seq_len,
                doc_stride=task.doc_stride,
                max_query_len=task.max_query_len,
                encode_offsets=getattr(vocab, "encode_with_offsets", None),
            )
            rows += [r for r, _ in windows]
            meta.append((example, [w for _, w in windows]))
        else:
            raise ValueError(f"data.task={task.name!r} has no text predictions.")
    return rows, meta


# id(run) -> (run, its jitted `apply`): one compilation per run and batch shape, however many
# calls (`infer.py --interactive` predicts one line at a time).
_APPLY_FNS: dict[int, tuple[Any, Any]] = {}


def _apply_fn(run: Any) -> Any:
    cached = _APPLY_FNS.get(id(run))
    if cached is not None and cached[0] is run:
        return cached[1]
    exp = run.exp
    family, module, rules = exp.family, exp.model, exp.rules

    def apply(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        with nn.logical_axis_rules(rules):
            return family.apply(module, params, batch).astype(jnp.float32)

    fn = jax.jit(
        apply,
        in_shardings=(run.param_shardings, exp.batch_sharding),
        out_shardings=partitioning.replicated(exp.mesh),
    )
    _APPLY_FNS.clear()  # Keep only the latest run (and its params) alive.
    _APPLY_FNS[id(run)] = (run, fn)
    return fn


def _logits(run: Any, rows: list[dict], batch_size: int) -> np.ndarray:
    """The head's logits (`family.apply`) of `rows`, in batches of a fixed shape."""
    exp = run.exp
    shards = exp.mesh.shape["data"] * exp.mesh.shape["fsdp"]
    batch_rows = -(-batch_size // shards) * shards
    fn = _apply_fn(run)
    keys = featurize.BASE_KEYS
    out = []
    with partitioning.activate(exp.mesh, exp.rules):
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            batch = {k: np.zeros((batch_rows, *chunk[0][k].shape), np.int32) for k in keys}
            for r, row in enumerate(chunk):
                for k in keys:
                    batch[k][r] = row[k]
            logits = fn(run.params, partitioning.global_batch(batch, exp.batch_sharding))
            out.append(np.asarray(jax.device_get(logits))[: len(chunk)])
    return np.concatenate(out)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def predict_text(run: Any, prompts: Sequence[str], *, batch_size: int = 8) -> list[dict]:
    """What a model that does not generate makes of each prompt, by its task:

      mlm                   each "[MASK]" filled: output the text, "fills" the pieces
      classification        output the label ("text\\ttext_b" for a pair), score its probability
      token_classification  output "word/TAG ...", "tags" per whitespace word (words past
                            data.seq_len get none)
      question_answering    the prompt a JSON object {"question", "context"}: output the
                            answer ("" for none), score its start + end logit

    Returns [{"prompt", "output", "score", ...}] in order (`generate_text`'s shape).
    """
    exp = run.exp
    rows, meta = _rows(exp, prompts)
    logits = _logits(run, rows, batch_size)
    labels = getattr(exp.splits, "labels", ())
    results = []
    row = 0
    for prompt, info in zip(prompts, meta, strict=True):
        result: dict[str, Any] = {"prompt": prompt, "score": None}
        name = exp.task.name
        if name == "mlm":
            masked = np.flatnonzero(rows[row]["inputs"] == exp.vocab.mask_id)
            fills = [exp.vocab.decode([int(logits[row, p].argmax())]) for p in masked]
            parts = _split_masks(prompt, mask_markers(exp.vocab))
            text = parts[0] + "".join(f + p for f, p in zip(fills, parts[1:], strict=False))
            result.update(output=text, fills=fills)
        elif name == "classification":
            probs = _softmax(logits[row, 0])
            best = int(probs.argmax())
            result.update(
                output=labels[best] if best < len(labels) else str(best), score=float(probs[best])
            )
        elif name == "token_classification":
            ids = featurize.word_predictions(rows[row]["weights"], logits[row].argmax(-1))
            tags = [labels[i] if i < len(labels) else str(i) for i in ids]
            # Words past data.seq_len have no tag: zip stops at the tagged ones.
            tagged = zip(info, tags, strict=False)
            result.update(output=" ".join(f"{w}/{t}" for w, t in tagged), tags=tags)
        else:
            example, windows = info
            n = len(windows)
            contexts = {example["id"]: example["context"]}
            nbest = task_metrics.qa_predictions(
                windows,
                logits[row : row + n, 0],
                logits[row : row + n, 1],
                contexts,
                n_best=N_BEST,
                max_answer_length=MAX_ANSWER_LENGTH,
                null_threshold=0.0,
            )[example["id"]]
            result.update(output=nbest[0][0], score=float(nbest[0][1]))
            row += n - 1
        row += 1
        results.append(result)
    return results
