"""Log-likelihood scores as lm-evaluation-harness computes them: pure functions, no model.

A request is (context tokens, continuation tokens); the model reads context + continuation[:-1]
and its score is the sum of the continuation tokens' log-probabilities, with `is_greedy` true
when every continuation token is the argmax of its position (harness: `loglikelihood`).
Multiple choice (`multiple_choice_metrics`) reports the harness's `acc` (argmax of the summed
log-likelihoods), `acc_norm` (argmax of log-likelihood / the choice's length in characters:
`len(choice)`, what lm_eval 0.4's `ConfigurableTask.process_results` divides by) and
`acc_bytes` (divided by the choice's UTF-8 byte length instead). Long documents are scored in
sliding windows (`rolling_token_windows`, the harness's `get_rolling_token_windows` followed by
`make_disjoint_window`), their sums aggregated to perplexity, bits per byte and word/byte
perplexity exactly as the harness's `weighted_perplexity` and `bits_per_byte` do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def token_logprobs(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(target), target is the argmax) at each position; logits [..., L, V], targets
    [..., L] int. Computed in float32 whatever the logits' dtype."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    # A tie counts as greedy only when the target is the first maximum, as torch's argmax is.
    greedy = jnp.argmax(logp, axis=-1) == targets
    return picked, greedy


def request_scores(
    logprobs: np.ndarray, greedy: np.ndarray, request_ids: np.ndarray, num_requests: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-request (sum of log-probs, all greedy) from per-position values.

    Args:
      logprobs, greedy: [..., L] per target position (`token_logprobs`).
      request_ids: [..., L] int, the request whose continuation a position scores, -1 elsewhere
        (context and padding positions).
      num_requests: requests 0..num_requests-1; one that owns no position raises ValueError.
    """
    ids = np.asarray(request_ids).ravel()
    mask = ids >= 0
    if mask.any() and ids[mask].max() >= num_requests:
        raise ValueError(f"request id {ids[mask].max()} >= num_requests={num_requests}.")
    counts = np.bincount(ids[mask], minlength=num_requests)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"Request {missing} has no continuation position to score.")
    lls = np.bincount(
        ids[mask], weights=np.asarray(logprobs, np.float64).ravel()[mask], minlength=num_requests
    )
    misses = np.bincount(
        ids[mask], weights=~np.asarray(greedy, bool).ravel()[mask], minlength=num_requests
    )
    return lls, misses == 0


def multiple_choice_metrics(
    lls: Sequence[float], choices: Sequence[str], gold: int
) -> dict[str, float]:
    """acc, acc_norm and acc_bytes of one multiple-choice question, as lm-evaluation-harness
    defines them: argmax of `lls`, of `lls / len(choice)` and of `lls / utf-8 bytes of the
    choice` equal to `gold` (1.0 or 0.0). `choices` are the answer strings without the target
    delimiter (the harness measures `doc_to_choice`, not the scored continuation)."""
    lls = np.asarray(lls, np.float64)
    if len(lls) != len(choices) or not len(choices):
        raise ValueError(f"{len(lls)} log-likelihoods for {len(choices)} choices.")
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold={gold} is not the index of one of the {len(choices)} choices.")
    chars = np.array([float(len(c)) for c in choices])
    nbytes = np.array([float(len(c.encode("utf-8"))) for c in choices])
    return {
        "acc": float(np.argmax(lls) == gold),
        "acc_norm": float(np.argmax(lls / chars) == gold),
        "acc_bytes": float(np.argmax(lls / nbytes) == gold),
    }


def mean_metrics(per_item: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the items (the harness's `mean` aggregation)."""
    if not per_item:
        raise ValueError("No items to aggregate.")
    return {k: float(np.mean([m[k] for m in per_item])) for k in per_item[0]}


def rolling_token_windows(
    tokens: Sequence[int], prefix_token: int, max_seq_len: int, context_len: int = 1
) -> Iterator[tuple[list[int], list[int]]]:
    """Disjoint (context, continuation) windows that together predict every token of `tokens`
    once: lm_eval.utils.get_rolling_token_windows + make_disjoint_window.

    The first window predicts up to `max_seq_len` tokens from `prefix_token`; each further one
    predicts up to `max_seq_len - context_len + 1` new tokens, conditioned on the tokens before
    them so that context + continuation[:-1] fills `max_seq_len` positions.
    """
    if not 1 <= context_len <= max_seq_len:
        raise ValueError(f"context_len={context_len} must be in [1, max_seq_len={max_seq_len}].")
    tokens = list(tokens)
    if not tokens:
        return
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    windows = [([prefix_token] + tokens[: first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        end = predicted + window_pred_len
        windows.append(
            (tokens[end - max_seq_len - 1 : end - 1], tokens[end - window_pred_len : end])
        )
        predicted += window_pred_len
    for context, continuation in windows:
        # Disjoint: the context stops where the predicted tokens start.
        yield context[: len(context) - (len(continuation) - 1)], continuation


def count_words(text: str) -> int:
    """Words as the harness counts them for word perplexity (`ConfigurableTask.count_words`)."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    """UTF-8 bytes of `text`."""
    return len(text.encode("utf-8"))


def perplexity(total_ll: float, units: float) -> float:
    """exp(-total_ll / units): per-token perplexity with units = tokens, the harness's
    word_perplexity / byte_perplexity with words / bytes (`weighted_perplexity`)."""
    if units <= 0:
        raise ValueError(f"perplexity needs a positive count of units, got {units}.")
    return math.exp(-total_ll / units)


def bits_per_byte(total_ll: float, num_bytes: float) -> float:
    """-total_ll / num_bytes / ln 2 (the harness's `bits_per_byte`)."""
    if num_bytes <= 0:
        raise ValueError(f"bits_per_byte needs a positive byte count, got {num_bytes}.")
    return -total_ll / num_bytes / math.log(2)


def rolling_metrics(
    lls: Sequence[float], texts: Sequence[str], tokens: Sequence[int]
) -> dict[str, float]:
    """Corpus-level metrics of documents scored whole: their log-likelihoods `lls`, their texts
    and their token counts. Sums over documents first, as the harness's weighted aggregations do."""
    total = float(np.sum(lls))
    num_bytes = sum(count_bytes(t) for t in texts)
    return {
        "loglikelihood": total,
        "token_perplexity": perplexity(total, float(np.sum(tokens))),
        "word_perplexity": perplexity(total, sum(count_words(t) for t in texts)),
        "byte_perplexity": perplexity(total, num_bytes),
        "bits_per_byte": bits_per_byte(total, num_bytes),
    }
