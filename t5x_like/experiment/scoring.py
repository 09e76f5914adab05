"""Log-likelihood scoring of a decoder-only checkpoint: requests -> packed rows -> jitted forward.

A request is (context ids, continuation ids). Requests are packed first-fit (longest first)
into rows of `seq_len` tokens, each request its own segment (positions restart at 0, attention
stays inside it), and rows go through the model in batches of one fixed shape (the last one
padded with empty rows), so one compilation serves a whole task. A request longer than a row is
cut from the left as lm-evaluation-harness cuts it (`(context + continuation)[-(seq_len + 1):]`).
Each request gets the sum of its continuation's log-probabilities and whether each of those
tokens was the argmax (`evaluation.loglikelihood`).

Texts are encoded harness-style (`encode_pair`): the context's trailing whitespace moves to the
continuation, the continuation's ids are those of the whole text after the context's, and every
context starts with BOS (the start token the model was trained with). Multiple-choice tasks come
from JSONL (`read_task_jsonl`: `context`, `choices`, `gold` per line) or from the embedded
corpus (`next_sentence_task`); documents are scored with rolling windows (`score_documents`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from t5x_like import partitioning, storage
from t5x_like.data import packing, tokenizers
from t5x_like.data.preprocessors import BOS_ID
from t5x_like.data.sharded_iterator import process_rows
from t5x_like.errors import ConfigError
from t5x_like.evaluation import loglikelihood as ll_lib
from t5x_like.experiment.restore import RestoredRun

# The tasks `score_checkpoint` makes from the run's own eval split.
BUILTIN_TASKS = ("next_sentence", "rolling")
# (batch of packed rows) -> (log-probs [B, L], greedy [B, L]) of each row's targets.
Forward = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Request:
    """Token ids of a context (BOS first) and of the continuation to score after it."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Question:
    """A multiple-choice question: the choices are scored as continuations of the context."""

    context: str
    choices: tuple[str, ...]
    gold: int


def _row_tokens(request: Request, seq_len: int) -> tuple[list[int], list[int], int]:
    """(inputs, targets, continuation length) of a request, cut from the left to `seq_len`."""
    n = len(request.continuation)
    if n == 0:
        raise ValueError("A request's continuation is empty: there is nothing to score.")
    if n > seq_len:
        raise ValueError(
            f"A continuation of {n} tokens does not fit rows of seq_len={seq_len}: raise "
            "--seq_len or shorten the continuation."
        )
    if not request.context:
        raise ValueError("A request's context is empty: it needs at least BOS.")
    whole = [*request.context, *request.continuation][-(seq_len + 1) :]
    return whole[:-1], whole[1:], n


def pack_requests(
    requests: Sequence[Request], seq_len: int, batch_rows: int
) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Batches [batch_rows, seq_len] of packed rows for `requests`, each with its request ids.

    Each batch is (rows in the causal_lm layout without weights: inputs, targets, segment_ids,
    positions; request_ids: [B, L] the request whose continuation a target position scores,
    -1 elsewhere).
    """
    if seq_len < 1 or batch_rows < 1:
        raise ValueError(f"seq_len={seq_len} and batch_rows={batch_rows} must be >= 1.")
    pieces = [_row_tokens(r, seq_len) for r in requests]
    # First fit, longest first: few rows, and the order is deterministic.
    order = sorted(range(len(pieces)), key=lambda i: (-len(pieces[i][0]), i))
    free: list[int] = []
    rows: list[list[int]] = []
    for i in order:
        n = len(pieces[i][0])
        row = next((r for r, room in enumerate(free) if room >= n), None)
        if row is None:
            free.append(seq_len)
            rows.append([])
            row = len(rows) - 1
        free[row] -= n
        rows[row].append(i)
    batches = []
    for start in range(0, len(rows), batch_rows):
        shape = (batch_rows, seq_len)
        arrays = {k: np.zeros(shape, np.int32) for k in ("inputs", "targets", "segment_ids")}
        arrays["positions"] = np.zeros(shape, np.int32)
        request_ids = np.full(shape, -1, np.int32)
        for b, members in enumerate(rows[start : start + batch_rows]):
            at = 0
            for segment, i in enumerate(members, start=1):
                inputs, targets, n_cont = pieces[i]
                end = at + len(inputs)
                arrays["inputs"][b, at:end] = inputs
                arrays["targets"][b, at:end] = targets
                arrays["segment_ids"][b, at:end] = segment
                arrays["positions"][b, at:end] = np.arange(len(inputs))
                request_ids[b, end - n_cont : end] = i
                at = end
        batches.append((arrays, request_ids))
    return batches


@dataclasses.dataclass
class Scores:
    """Per-request results of `score_requests` and what it took."""

    loglikelihoods: np.ndarray  # float64 [N]
    greedy: np.ndarray  # bool [N]
    rows: int
    batches: int
    first_batch_s: float  # includes the compilation
    wall_s: float


def score_requests(
    forward: Forward, requests: Sequence[Request], seq_len: int, batch_rows: int
) -> Scores:
    """Each request's continuation log-likelihood and is_greedy, in the order given."""
    start = time.perf_counter()
    batches = pack_requests(requests, seq_len, batch_rows)
    logprobs, greedy, ids = [], [], []
    first = 0.0
    for k, (batch, request_ids) in enumerate(batches):
        lp, gr = forward(batch)
        logprobs.append(np.asarray(lp))
        greedy.append(np.asarray(gr))
        ids.append(request_ids)
        if k == 0:
            first = time.perf_counter() - start
    if not requests:
        raise ValueError("No requests to score.")
    lls, is_greedy = ll_lib.request_scores(
        np.stack(logprobs), np.stack(greedy), np.stack(ids), len(requests)
    )
    rows = sum(int((r >= 0).any(axis=1).sum()) for r in ids)
    return Scores(lls, is_greedy, rows, len(batches), first, time.perf_counter() - start)


# -- forwards -----------------------------------------------------------------------------------


def module_forward(family: Any, module: Any, params: Any) -> Forward:
    """A Forward of `module` (a `models.ModelFamily`'s module) with `params` on the default
    device, jitted once per batch shape; for tests and tools that hold params directly."""

    @jax.jit
    def run(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return ll_lib.token_logprobs(family.apply(module, params, batch), batch["targets"])

    return lambda batch: jax.device_get(run(params, batch))


def check_scorable(run: RestoredRun) -> None:
    """Raises ConfigError unless the run's rows are causal-LM rows (`packing.KEYS`: inputs are
    the targets shifted right) and its model reads them: a decoder-only run (causal_lm, sft)."""
    features = run.exp.task.features
    if set(features) != set(packing.KEYS) or not set(run.exp.family.features) <= set(features):
        raise ConfigError(
            f"Log-likelihood scoring needs a decoder-only run (causal-LM rows of {packing.KEYS}); "
            f"this run's data.task={run.exp.task.name!r} makes {sorted(features)}."
        )


def run_forward(run: RestoredRun) -> tuple[Forward, int]:
    """(a Forward of a restored run on its mesh, the row multiple its batches need).

    Batches are laid out by the run's batch sharding and params stay in their shardings; the
    outputs come back replicated. In a multi-process job every process calls it on the same
    batch and feeds only the rows its devices hold.
    """
    check_scorable(run)
    exp = run.exp

    def apply(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        logits = exp.family.apply(exp.model, params, batch)
        return ll_lib.token_logprobs(logits, batch["targets"])

    fn = jax.jit(
        apply,
        in_shardings=(run.param_shardings, exp.batch_sharding),
        out_shardings=partitioning.replicated(exp.mesh),
    )

    def forward(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(*process_rows(exp.batch_sharding, len(batch["inputs"])))
        with partitioning.activate(exp.mesh, exp.rules):
            global_batch = partitioning.global_batch(
                {k: v[rows] for k, v in batch.items()}, exp.batch_sharding
            )
            return jax.device_get(fn(run.params, global_batch))

    return forward, exp.mesh.shape["data"] * exp.mesh.shape["fsdp"]


# -- texts -> requests ---------------------------------------------------------------------------


def encode_pair(vocab: Any, context: str, continuation: str) -> Request:
    """A request for `continuation` after `context`, tokenised as lm-evaluation-harness does
    (`_encode_pair`): trailing whitespace of the context moves to the continuation, and the
    continuation's ids are the whole text's ids after the context's. The context gets BOS."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = vocab.encode(context + continuation)
    context_ids = vocab.encode(context) if context else []
    continuation_ids = whole[len(context_ids) :]
    if not continuation_ids:
        raise ValueError(f"Continuation {continuation!r} encodes to no tokens after its context.")
    (start_id,) = tokenizers.start_ids(vocab, fallback=BOS_ID)
    return Request((start_id, *context_ids), tuple(continuation_ids))


def read_task_jsonl(path: str) -> list[Question]:
    """Multiple-choice questions of a JSONL file: one object per line with `context` (str),
    `choices` (a list of >= 2 strings) and `gold` (the right choice's index); empty lines are
    skipped. Raises ValueError naming the file and line of the first malformed one."""
    questions = []
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Task file {path} does not exist: pass --task=<a .jsonl file> or one of the "
            f"built-in tasks {BUILTIN_TASKS}."
        )
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected an object with context, choices and gold.")
            context, choices, gold = (record.get(k) for k in ("context", "choices", "gold"))
            if not isinstance(context, str):
                raise ValueError(f"{where}: 'context' must be a string, got {context!r}.")
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)
            ):
                raise ValueError(
                    f"{where}: 'choices' must be a list of at least 2 non-empty strings, "
                    f"got {choices!r}."
                )
            if isinstance(gold, bool) or not isinstance(gold, int):
                raise ValueError(f"{where}: 'gold' must be an integer index, got {gold!r}.")
            if not 0 <= gold < len(choices):
                raise ValueError(
                    f"{where}: gold={gold} is not an index of its {len(choices)} choices."
                )
            questions.append(Question(context, tuple(choices), gold))
    if not questions:
        raise ValueError(f"{path}: no questions (one JSON object per line).")
    return questions


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _sentences(text: str) -> list[str]:
    """Prose sentences of a document: 20-200 characters, on one line each."""
    text = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(text) if 20 <= len(s) <= 200]


def next_sentence_task(
    texts: Sequence[str],
    num_questions: int,
    num_choices: int = 4,
    seed: int = 0,
    keep: Callable[[str], bool] | None = None,
) -> list[Question]:
    """Built-in multiple choice from documents: the context is a sentence, the choices its true
    next sentence and `num_choices - 1` sentences of other documents, shuffled (seeded).

    Questions take consecutive sentence pairs in document order until `num_questions`;
    `keep` may drop sentences (e.g. those too long for a row).
    """
    if num_choices < 2 or num_questions < 1:
        raise ValueError(f"num_choices={num_choices} >= 2 and num_questions={num_questions} >= 1.")
    keep = keep or (lambda s: True)
    docs = [_sentences(t) for t in texts]
    pool = [(d, s) for d, sents in enumerate(docs) for s in sents if keep(s)]
    rng = np.random.default_rng(seed)
    questions = []
    for d, sents in enumerate(docs):
        for first, second in zip(sents[:-1], sents[1:], strict=True):
            if len(questions) == num_questions:
                return questions
            if not keep(second):
                continue
            distractors: list[str] = []
            while len(distractors) < num_choices - 1 and len(pool) > num_choices:
                other_doc, s = pool[int(rng.integers(len(pool)))]
                if other_doc != d and s not in distractors and s != second:
                    distractors.append(s)
            if len(distractors) < num_choices - 1:
                break
            gold = int(rng.integers(num_choices))
            choices = distractors[:gold] + [second] + distractors[gold:]
            questions.append(Question(first, tuple(choices), gold))
    if len(questions) < num_questions:
        raise ValueError(
            f"The documents make only {len(questions)} next-sentence questions, fewer than "
            f"{num_questions}: lower --num_questions."
        )
    return questions


# -- tasks --------------------------------------------------------------------------------------


def score_multiple_choice(
    forward: Forward,
    vocab: Any,
    questions: Sequence[Question],
    *,
    seq_len: int,
    batch_rows: int,
    delimiter: str = " ",
) -> dict[str, Any]:
    """acc, acc_norm and acc_bytes of the questions (each choice scored as `delimiter + choice`
    after the context, as the harness's multiple_choice output type does), the per-question
    log-likelihoods and the throughput."""
    requests = [encode_pair(vocab, q.context, delimiter + c) for q in questions for c in q.choices]
    scores = score_requests(forward, requests, seq_len, batch_rows)
    per_question, at = [], 0
    for q in questions:
        lls = scores.loglikelihoods[at : at + len(q.choices)]
        greedy = scores.greedy[at : at + len(q.choices)]
        at += len(q.choices)
        metrics = ll_lib.multiple_choice_metrics(lls, q.choices, q.gold)
        per_question.append(
            {
                "context": q.context,
                "choices": list(q.choices),
                "gold": q.gold,
                "loglikelihoods": lls.tolist(),
                "greedy": greedy.tolist(),
                **metrics,
            }
        )
    metrics = ll_lib.mean_metrics(
        [{k: p[k] for k in ("acc", "acc_norm", "acc_bytes")} for p in per_question]
    )
    return {
        "metrics": metrics,
        "questions": len(questions),
        "choices": len(requests),
        "per_question": per_question,
        **_throughput(scores, len(requests)),
    }


def score_documents(
    forward: Forward,
    vocab: Any,
    texts: Sequence[str],
    *,
    seq_len: int,
    batch_rows: int,
    context_len: int = 1,
) -> dict[str, Any]:
    """Rolling log-likelihood of whole documents (windows of `seq_len` with `context_len`
    tokens of context, BOS before the first): per-document sums and the corpus's perplexity,
    bits per byte and word/byte perplexity (`loglikelihood.rolling_metrics`)."""
    requests, owner, tokens = [], [], []
    (start_id,) = tokenizers.start_ids(vocab, fallback=BOS_ID)
    for d, text in enumerate(texts):
        ids = vocab.encode(text)
        if not ids:
            raise ValueError(f"Document {d} encodes to no tokens.")
        tokens.append(len(ids))
        for context, continuation in ll_lib.rolling_token_windows(
            ids, start_id, seq_len, context_len
        ):
            requests.append(Request(tuple(context), tuple(continuation)))
            owner.append(d)
    scores = score_requests(forward, requests, seq_len, batch_rows)
    per_doc = np.bincount(owner, weights=scores.loglikelihoods, minlength=len(texts))
    return {
        "metrics": ll_lib.rolling_metrics(per_doc, texts, tokens),
        "documents": len(texts),
        "windows": len(requests),
        "tokens": int(sum(tokens)),
        "loglikelihoods": per_doc.tolist(),
        **_throughput(scores, len(requests)),
    }


def _throughput(scores: Scores, requests: int) -> dict[str, Any]:
    steady = scores.wall_s - scores.first_batch_s
    return {
        "rows": scores.rows,
        "batches": scores.batches,
        "score_time_s": scores.wall_s,
        "first_batch_s": scores.first_batch_s,
        "requests_per_s": requests / scores.wall_s if scores.wall_s else 0.0,
        # Without the first batch (its compilation); None with a single batch.
        "steady_requests_per_s": (
            requests * (scores.batches - 1) / scores.batches / steady
            if scores.batches > 1 and steady > 0
            else None
        ),
    }


# -- a checkpoint ---------------------------------------------------------------------------------


def _split_texts(run: RestoredRun, split: str, limit: int) -> list[str]:
    """The first `limit` texts of `split` of the run's dataset (its data.text_key feature)."""
    from t5x_like.data import sources

    source = run.exp.splits[split]
    count = min(limit, len(source))
    return [sources.record_text(source[i], run.exp.task.text_key) for i in range(count)]


def score_checkpoint(
    cfg: Any,
    workdir: str,
    *,
    task: str,
    step: int | None = None,
    split: str | None = None,
    num_questions: int = 100,
    num_documents: int = 20,
    batch_size: int = 8,
    seq_len: int | None = None,
    delimiter: str = " ",
    seed: int = 0,
    output: str | None = None,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Scores checkpoint `step` (None: latest) of `workdir` on `task`; returns the report.

    Args:
      cfg: the run's config (configs/saved_run.py:<workdir>), overrides applied (the mesh).
      task: a JSONL file of multiple-choice questions (`read_task_jsonl`), "next_sentence"
        (built from `split`'s documents, `num_questions` of them) or "rolling" (rolling
        log-likelihood of `split`'s first `num_documents` documents).
      split: the split built-in tasks read; None: the config's data.eval_split.
      batch_size: rows per forward pass, rounded up to a multiple of the data-parallel shards.
      seq_len: tokens per row (the rolling window); None: the config's data.seq_len.
      delimiter: text between context and choice (the harness's target_delimiter).
      output: where process 0 writes the JSON report; None:
        `<workdir>/eval/score_step_<N>_<task name>.json`.

    Raises:
      FileNotFoundError: no such workdir, step or task file.
      ConfigError: a run that is not decoder-only, a config that does not fit the devices.
      ValueError: a malformed task file (file:line), bad sizes.
    """
    from t5x_like.experiment import restore

    start = time.perf_counter()
    is_file = task not in BUILTIN_TASKS
    questions = read_task_jsonl(task) if is_file else None  # Fails before anything is built.
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    split = split or cfg.data.eval_split
    run = restore.restore_run(
        cfg, workdir, step=step, devices=devices, splits_needed=() if is_file else (split,)
    )
    check_scorable(run)
    seq_len = seq_len or run.exp.task.seq_len
    max_len = run.exp.model_config.max_len
    if run.exp.model_config.position == "learned" and seq_len > max_len:
        raise ValueError(
            f"seq_len={seq_len} exceeds the learned position table (model.max_len={max_len}); "
            f"use --seq_len <= {max_len}."
        )
    forward, multiple = run_forward(run)
    batch_rows = -(-batch_size // multiple) * multiple
    loaded = time.perf_counter()
    vocab = run.exp.vocab
    if task == "rolling":
        texts = _split_texts(run, split, num_documents)
        result = score_documents(forward, vocab, texts, seq_len=seq_len, batch_rows=batch_rows)
    else:
        if questions is None:
            texts = _split_texts(run, split, max(200, 10 * num_questions))

            def fits(sentence: str) -> bool:  # A choice and its context share one row.
                return len(vocab.encode(delimiter + sentence)) <= seq_len // 2

            questions = next_sentence_task(texts, num_questions, seed=seed, keep=fits)
        result = score_multiple_choice(
            forward, vocab, questions, seq_len=seq_len, batch_rows=batch_rows, delimiter=delimiter
        )
    end = time.perf_counter()
    name = os.path.splitext(os.path.basename(task))[0]
    output = (
        storage.resolve(output)
        if output
        else storage.join(run.workdir, "eval", f"score_step_{run.step}_{name}.json")
    )
    mesh_devices = list(run.exp.mesh.devices.flat)
    report = {
        "workdir": run.workdir,
        "checkpoint": run.checkpoint,
        "step": run.step,
        "task": task if is_file else name,
        "split": None if is_file else split,
        "seq_len": seq_len,
        "batch_rows": batch_rows,
        "mesh": {k: int(v) for k, v in run.exp.mesh.shape.items()},
        "device_count": len(mesh_devices),
        "platform": mesh_devices[0].platform,
        "load_time_s": loaded - start,
        "wall_time_s": end - start,
        "output": output,
        **result,
    }
    if jax.process_index() == 0:  # Whole and atomic, on local disk or an object store.
        storage.write_json(output, report)
    return report


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the console: what was scored, the metrics and where the report is."""
    mesh = " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
    what = (
        f"{report['documents']} documents, {report['windows']} windows"
        if "documents" in report
        else f"{report['questions']} questions, {report['choices']} choices"
    )
    lines = [
        f"{report['checkpoint']} on {report['task']!r}: {what} in {report['rows']} rows, "
        f"{report['batches']} batches",
        f"mesh {mesh} ({report['device_count']} {report['platform']} devices), "
        f"{report['score_time_s']:.1f}s scoring ({report['requests_per_s']:.1f} requests/s)",
    ]
    lines += [f"  {k:<18} {v:.6g}" for k, v in report["metrics"].items()]
    lines.append(f"report: {report['output']}")
    return "\n".join(lines)
