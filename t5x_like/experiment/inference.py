"""Text in, text out: prompts encoded, decoded with the KV cache, decoded back to text.

Decoder-only prompts start from the start token (the pad id, as in training) followed by the
prompt's pieces, without EOS, and the model continues them. Encoder-decoder prompts are the
encoder's input: the config's `data.inputs_prefix` + the prompt, + EOS, at most
`data.inputs_len` tokens. `<extra_id_i>` in a prompt is T5's sentinel i (span-corruption
models fill them in). Prompts go through in batches of a fixed shape (the last one padded
with empty rows), so one compilation serves them all. In a multi-process job every process
calls `generate_text` with the same prompts and feeds only the batch rows its devices hold;
every process gets all the results (the script writes them from process 0 only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from t5x_like import decoding, partitioning
from t5x_like.data.preprocessors import BOS_ID
from t5x_like.data.sharded_iterator import process_rows
from t5x_like.experiment.restore import RestoredRun

# Keys a JSONL prompt record may use for its text, in order of preference.
PROMPT_KEYS = ("prompt", "inputs", "text")


def read_prompts(prompts: Sequence[str] = (), path: str | None = None) -> list[str]:
    """`prompts` plus those of `path`: a text file (one per line) or JSONL (one object per line,
    its text under one of PROMPT_KEYS). Empty lines are skipped."""
    out = list(prompts)
    if path:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                if path.endswith(".jsonl"):
                    record = json.loads(line)
                    key = next((k for k in PROMPT_KEYS if k in record), None)
                    if key is None:
                        raise ValueError(
                            f"{path}:{number}: no prompt text; use one of the keys {PROMPT_KEYS}."
                        )
                    line = str(record[key])
                out.append(line)
    if not out:
        raise ValueError("No prompts: pass --prompt and/or --prompts_file.")
    return out


def _encode(
    run: RestoredRun, prompts: Sequence[str], batch_rows: int, width: int
) -> dict[str, np.ndarray]:
    """A batch of `batch_rows` rows in the model family's prompt format (missing rows are
    empty); decoder prompts are `width` tokens wide."""
    exp = run.exp
    return exp.family.prompt_batch(exp.vocab, prompts, batch_rows, width, exp.task, BOS_ID)


def generate_text(
    run: RestoredRun,
    prompts: Sequence[str],
    config: decoding.DecodeConfig,
    *,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """[{"prompt", "output", "score", "tokens"}] for each prompt, in order.

    A collective in a multi-process job: every process calls it with the same prompts.
    """
    exp = run.exp
    # Rows must split evenly over the data-parallel mesh axes (and so over the processes).
    shards = exp.mesh.shape["data"] * exp.mesh.shape["fsdp"]
    batch_rows = -(-batch_size // shards) * shards
    # The rows of each batch this process's devices hold (all of them with one process).
    rows = slice(*process_rows(exp.batch_sharding, batch_rows))
    # Decoder-only: one prompt width for every batch (start token + pieces), one compilation.
    width = max(len(exp.vocab.encode_with_sentinels(p)) + 1 for p in prompts)
    exp.family.check_prompt_fits(width, config.max_new_tokens, exp.model_config)

    def run_batch(params: Any, batch: dict[str, jax.Array]) -> decoding.DecodeOutput:
        return decoding.generate(exp.model, params, batch, config, eos_id=exp.vocab.eos_id)

    rep = partitioning.replicated(exp.mesh)
    fn = jax.jit(
        run_batch, in_shardings=(run.param_shardings, exp.batch_sharding), out_shardings=rep
    )
    results: list[dict[str, Any]] = []
    with partitioning.activate(exp.mesh, exp.rules):
        for start in range(0, len(prompts), batch_rows):
            chunk = list(prompts[start : start + batch_rows])
            encoded = _encode(run, chunk, batch_rows, width)
            batch = partitioning.global_batch(
                {k: v[rows] for k, v in encoded.items()}, exp.batch_sharding
            )
            out = jax.device_get(fn(run.params, batch))
            for row, prompt in enumerate(chunk):
                tokens = out.tokens[row, : out.lengths[row]].tolist()
                results.append(
                    {
                        "prompt": prompt,
                        "output": exp.vocab.decode(tokens),
                        "score": float(out.scores[row]),
                        "tokens": tokens,
                    }
                )
    return results
