"""Decoded-text evaluation: greedy-decode eval examples and score the text against the targets.

Used by the trainer (`train.decode_batches` batches per eval) and by fine-tuning: accuracy,
exact match and BLEU of the decoded outputs (see `metrics.py`), plus a few examples to log.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from t5x_like import decoding, partitioning
from t5x_like.evaluation import metrics
from t5x_like.experiment import assembly as experiment


def jit_decode(exp: Any, param_shardings: Any) -> Any:
    """Jitted greedy decoding of a global batch: (params, batch) -> (outputs, targets, inputs).

    The results are replicated, so every process can read every row.
    """
    config = decoding.DecodeConfig(strategy="greedy", max_new_tokens=exp.task.targets_len)
    # The families with decoded-text metrics read their prompts from the eval batch's features.
    tokens_key, segment_ids_key = exp.family.prompt_keys

    def decode_batch(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        prompts = {k: batch[k] for k in (tokens_key, segment_ids_key)}
        outputs = decoding.generate(exp.model, params, prompts, config, eos_id=exp.vocab.eos_id)
        return outputs.tokens, batch["targets"], batch[tokens_key]

    rep = partitioning.replicated(exp.mesh)
    return jax.jit(
        decode_batch,
        in_shardings=(param_shardings, exp.batch_sharding),
        out_shardings=(rep, rep, rep),
    )


def evaluate_decodes(
    exp: Any, decode_fn: Any, params: Any
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """({decode_accuracy, decode_exact_match, decode_bleu, decode_examples}, examples) over
    the eval split's first train.decode_batches batches, one example per row.

    Rows whose targets are all padding (eval top-up rows) are skipped.
    """
    predictions: list[str] = []
    references: list[str] = []
    inputs: list[str] = []
    for local_batch in experiment.make_eval_iterator(exp, for_decoding=True):
        batch = partitioning.global_batch(local_batch, exp.batch_sharding)
        outputs, targets, encoder_inputs = jax.device_get(decode_fn(params, batch))
        for out, tgt, enc in zip(outputs, targets, encoder_inputs, strict=True):
            if not np.any(tgt):
                continue
            predictions.append(exp.vocab.decode(out))
            references.append(exp.vocab.decode(tgt))
            inputs.append(exp.vocab.decode(enc))
    if not predictions:
        return {}, []
    scores = {f"decode_{k}": v for k, v in metrics.text_metrics(predictions, references).items()}
    scores["decode_examples"] = float(len(predictions))
    examples = [
        {"inputs": i, "prediction": p, "target": r}
        for i, p, r in zip(inputs, predictions, references, strict=True)
    ]
    return scores, examples


def write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    """One JSON object per line (decoded examples), creating the directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
