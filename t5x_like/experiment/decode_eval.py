"""Decoded-text evaluation: decode eval examples and score the text against the references.

Used by the trainer (`train.decode_batches` batches per eval), by eval.py and by fine-tuning.
The family's adapter splits each eval row into a prompt and a reference
(`ModelFamily.decode_eval_batch`): an encoder-decoder row's encoder inputs and targets, a
decoder-only SFT row's prompt and completion. The prompts are decoded with the KV cache
(`decoding.generate`: train.decode_strategy, greedy by default; EOS or a train.decode_stop
string ends a row) and the predictions are scored: accuracy, exact match and BLEU
(`metrics.text_metrics`) and ROUGE-L (rouge-score, the `[eval]` extra), as decode_* metrics,
plus one record per example (inputs, prediction, target) for decodes/step_N.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from t5x_like import decoding, partitioning, storage
from t5x_like.evaluation import metrics, task_metrics
from t5x_like.experiment import assembly as experiment


def decode_config(exp: Any) -> decoding.DecodeConfig:
    """The DecodeConfig of the experiment's train.decode_* fields."""
    train = exp.cfg.train
    return decoding.DecodeConfig(
        strategy=train.get("decode_strategy", "greedy"),
        max_new_tokens=exp.family.decode_max_new_tokens(exp.task),
        temperature=float(train.get("decode_temperature", 1.0)),
        top_k=int(train.get("decode_top_k", 0)),
        top_p=float(train.get("decode_top_p", 1.0)),
        num_beams=int(train.get("decode_num_beams", 4)),
        stop_ids=decoding.stop_token_ids(exp.vocab, stop_strings(exp)),
    )


def stop_strings(exp: Any) -> tuple[str, ...]:
    """train.decode_stop as a tuple (config.json stores it as a list)."""
    return tuple(exp.cfg.train.get("decode_stop", None) or ())


def jit_decode(exp: Any, param_shardings: Any) -> Any:
    """Jitted decoding of a global batch: (params, batch) -> (outputs, targets, inputs).

    `outputs` [B, max_new_tokens] are the generated tokens, pad (0) after the ones the row
    keeps (`DecodeEvalBatch.keep`). The results are replicated, so every process can read
    every row.
    """
    config = decode_config(exp)

    def decode_batch(params: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        split = exp.family.decode_eval_batch(batch, exp.task)
        outputs = decoding.generate(
            exp.model, params, split.prompts, config, eos_id=exp.vocab.eos_id
        )
        kept = jnp.arange(outputs.tokens.shape[1])[None, :] < split.keep[:, None]
        return jnp.where(kept, outputs.tokens, decoding.PAD_ID), split.targets, split.inputs

    rep = partitioning.replicated(exp.mesh)
    return jax.jit(
        decode_batch,
        in_shardings=(param_shardings, exp.batch_sharding),
        out_shardings=(rep, rep, rep),
    )


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """decode_accuracy, decode_exact_match, decode_bleu and (with rouge-score installed)
    decode_rouge_l: rouge-score's ROUGE-L F-measure, mean over the examples."""
    scores = {f"decode_{k}": v for k, v in metrics.text_metrics(predictions, references).items()}
    if importlib.util.find_spec("rouge_score") is not None:
        scores["decode_rouge_l"] = task_metrics.rouge(predictions, references)["rougeL"]
    else:
        logging.log_first_n(
            logging.WARNING,
            "decode_rouge_l needs rouge-score: pip install -e '.[eval]'.",
            1,
        )
    return scores


def evaluate_decodes(
    exp: Any, decode_fn: Any, params: Any
) -> tuple[dict[str, float], list[dict[str, str]]]:
    """({decode_accuracy, decode_exact_match, decode_bleu, decode_rouge_l, decode_examples},
    examples) over the eval split's first train.decode_batches batches, one example per row.

    Each prediction is cut at the first train.decode_stop string. Rows whose reference is all
    padding (eval top-up rows) are skipped.
    """
    stop = stop_strings(exp)
    predictions: list[str] = []
    references: list[str] = []
    inputs: list[str] = []
    for local_batch in experiment.make_eval_iterator(exp, for_decoding=True):
        batch = partitioning.global_batch(local_batch, exp.batch_sharding)
        outputs, targets, prompts = jax.device_get(decode_fn(params, batch))
        for out, tgt, prompt in zip(outputs, targets, prompts, strict=True):
            if not np.any(tgt):
                continue
            predictions.append(decoding.cut_at_stop(exp.vocab.decode(out), stop))
            references.append(exp.vocab.decode(tgt))
            inputs.append(exp.vocab.decode(prompt))
    if not predictions:
        return {}, []
    scores = score(predictions, references)
    scores["decode_examples"] = float(len(predictions))
    examples = [
        {"inputs": i, "prediction": p, "target": r}
        for i, p, r in zip(inputs, predictions, references, strict=True)
    ]
    return scores, examples


def write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    """One JSON object per line (decoded examples), creating the directory."""
    # Whole-file write: a local path or an object-store URL (t5x_like/storage.py).
    storage.write_text(
        path if storage.is_remote(path) else os.path.abspath(path),
        "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records),
    )
