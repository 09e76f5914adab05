"""Text in, text out: prompts encoded, decoded with the KV cache, decoded back to text.

Decoder-only prompts start from the model's BOS where its tokenizer has one (HF checkpoints),
else from the start token (the pad id, as in training), followed by the prompt's pieces, without
EOS, and the model continues them. Encoder-decoder prompts are the encoder's input: the config's
`data.inputs_prefix` + the prompt, + EOS, at most `data.inputs_len` tokens. `<extra_id_i>` in a
prompt is T5's sentinel i (span-corruption models fill them in). Prompts go through in batches
of a fixed shape (the last one padded with empty rows), so one compilation serves them all. In a
multi-process job every process calls `generate_text` with the same prompts and feeds only the
batch rows its devices hold; every process gets all the results (the script writes them from
process 0 only).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

import jax
import numpy as np
from absl import logging

from t5x_like import decoding, partitioning
from t5x_like.data import text_files, tokenizers
from t5x_like.data.preprocessors import BOS_ID
from t5x_like.data.sharded_iterator import process_rows
from t5x_like.experiment.restore import RestoredRun

# Keys a JSONL prompt record may use for its text, in order of preference.
PROMPT_KEYS = ("prompt", "inputs", "text")
# `--prompts_file=-`: the prompts come from standard input, one per line.
STDIN = "-"
# What to do with a prompt longer than the model's context: refuse it ("off"), or keep its
# last ("left": tokens dropped on the left) or first ("right") tokens, with a warning.
TRUNCATE_SIDES = ("off", "left", "right")


def _jsonl_prompt(line: str, name: str, number: int) -> str:
    """The prompt text of JSONL line `number` of `name`; ValueError naming the line."""
    record = text_files.parse_jsonl_line(
        line,
        name,
        number,
        'a .jsonl prompts file holds one object per line, e.g. {"prompt": "..."}',
    )
    key = next((k for k in PROMPT_KEYS if k in record), None)
    if key is None:
        raise ValueError(f"{name}:{number}: no prompt text; use one of the keys {PROMPT_KEYS}.")
    if not isinstance(record[key], str):
        raise ValueError(f"{name}:{number}: {key!r} must be a string, got {record[key]!r}.")
    return record[key]


def _prompts_from_lines(lines: Iterable[bytes], name: str, jsonl: bool) -> list[str]:
    """The non-empty lines of `lines` (JSONL records with `jsonl`), stripped."""
    out = []
    for number, raw in enumerate(lines, start=1):
        line = text_files.decode_line(raw, name, number, what="the prompts").strip()
        if line:
            out.append(_jsonl_prompt(line, name, number) if jsonl else line)
    return out


def read_prompts(
    prompts: Sequence[str] = (), path: str | None = None, stdin: IO[bytes] | None = None
) -> list[str]:
    """`prompts` plus those of `path`: a text file (one per line), JSONL (a `.jsonl` file:
    one object per line, its text under one of PROMPT_KEYS), or `-` for one prompt per line
    of `stdin` (default: this process's standard input). Empty lines are skipped.

    Raises:
      ValueError: no prompts at all, or a line that is not UTF-8, not a JSON object or has no
        prompt text (naming the file and line).
      FileNotFoundError: no such file.
    """
    out = list(prompts)
    if path == STDIN:
        out += _prompts_from_lines(stdin or sys.stdin.buffer, "<stdin>", jsonl=False)
    elif path:
        with open(os.path.expanduser(path), "rb") as f:
            out += _prompts_from_lines(f, path, jsonl=path.endswith(".jsonl"))
    if not out:
        raise ValueError("No prompts: pass --prompt and/or --prompts_file (- for stdin).")
    return out


def prompt_context(exp: Any, max_new_tokens: int) -> tuple[int | None, str]:
    """(tokens, what sets them) a prompt may take: the encoder's row length where the model
    has an encoder (longer inputs would be cut), else what a learned position table leaves
    for the prompt next to the new tokens; (None, "") where nothing limits it (RoPE)."""
    lengths = exp.family.row_lengths(exp.task)
    if "encoder" in lengths:
        length = lengths["encoder"]
        fields = (f for f in ("inputs_len", "seq_len") if getattr(exp.task, f, None) == length)
        return length, next((f"data.{f}" for f in fields), "the encoder rows")
    model = exp.model_config
    if model.position == "learned":
        return (
            model.max_len - max_new_tokens,
            f"model.max_len={model.max_len} positions less max_new_tokens={max_new_tokens}",
        )
    return None, ""


def fit_prompt(
    exp: Any, prompt: str, index: int, truncate: str = "off", max_new_tokens: int = 0
) -> str:
    """`prompt`, or with `truncate` its tokens cut to what the model can take (a warning says
    so; see `prompt_context`): a prompt is never cut silently.

    A prompt takes its pieces (after `data.inputs_prefix`) plus one token, the start token
    or EOS.

    Raises:
      ValueError: the prompt is longer than the model takes and `truncate` is "off".
    """
    if truncate not in TRUNCATE_SIDES:
        raise ValueError(f"truncate={truncate!r}: choose one of {TRUNCATE_SIDES}.")
    context, field = prompt_context(exp, max_new_tokens)
    if context is None:
        return prompt
    vocab, prefix = exp.vocab, exp.task.inputs_prefix or ""
    count = len(vocab.encode_with_sentinels(prefix + prompt)) + 1
    if count <= context:
        return prompt
    where = f"the {context} tokens the model takes ({field})"
    if truncate == "off":
        raise ValueError(
            f"Prompt {index + 1} has {count} tokens, more than {where}: shorten it, or pass "
            "--truncate_prompts=left (keep its end) or --truncate_prompts=right (keep its "
            "start)."
        )
    ids = vocab.encode_with_sentinels(prompt)
    budget = context - 1 - (len(vocab.encode_with_sentinels(prefix)) if prefix else 0)
    while budget > 0:
        text = vocab.decode(ids[-budget:] if truncate == "left" else ids[:budget])
        # Decoded text can re-encode to more pieces: cut until it fits.
        if len(vocab.encode_with_sentinels(prefix + text)) + 1 <= context:
            logging.warning(
                "Prompt %d has %d tokens, more than %s: kept its %s %d tokens "
                "(--truncate_prompts=%s).",
                index + 1,
                count,
                where,
                "last" if truncate == "left" else "first",
                budget,
                truncate,
            )
            return text
        budget -= 1
    raise ValueError(f"Prompt {index + 1}: no room for any of its tokens in {where}.")


def _encode(
    run: RestoredRun, prompts: Sequence[str], batch_rows: int, width: int
) -> dict[str, np.ndarray]:
    """A batch of `batch_rows` rows in the model family's prompt format (missing rows are
    empty); decoder prompts are `width` tokens wide."""
    exp = run.exp
    # The model's BOS where its tokenizer has one (HF checkpoints); else our start token.
    (start_id,) = tokenizers.start_ids(exp.vocab, fallback=BOS_ID)
    return exp.family.prompt_batch(exp.vocab, prompts, batch_rows, width, exp.task, start_id)


class Generator:
    """Decodes prompts with one restored run and one decoding config; the jitted decoder is
    made once, so batches of the same prompt width reuse one compilation.

    A collective in a multi-process job: every process calls it with the same prompts.
    """

    def __init__(
        self,
        run: RestoredRun,
        config: decoding.DecodeConfig,
        *,
        batch_size: int = 8,
        truncate: str = "off",
        width_multiple: int = 1,
    ):
        """`truncate`: see `fit_prompt`. `width_multiple`: decoder prompt widths rounded up to
        a multiple of it (where the model takes it), so that prompts of similar lengths share
        a compilation (the interactive mode's prompts come one at a time)."""
        self.run, self.config, self.truncate = run, config, truncate
        self.width_multiple = width_multiple
        exp = run.exp
        # Rows must split evenly over the data-parallel mesh axes (and so over the processes).
        shards = exp.mesh.shape["data"] * exp.mesh.shape["fsdp"]
        self.batch_rows = -(-batch_size // shards) * shards
        # The rows of each batch this process's devices hold (all of them with one process).
        self.rows = slice(*process_rows(exp.batch_sharding, self.batch_rows))

        def run_batch(params: Any, batch: dict[str, jax.Array]) -> decoding.DecodeOutput:
            # Any of the tokenizer's EOS ids ends a row (Llama 3 has two).
            eos_ids = getattr(exp.vocab, "eos_ids", exp.vocab.eos_id)
            return decoding.generate(exp.model, params, batch, config, eos_id=eos_ids)

        rep = partitioning.replicated(exp.mesh)
        self._fn = jax.jit(
            run_batch, in_shardings=(run.param_shardings, exp.batch_sharding), out_shardings=rep
        )

    def _width(self, prompts: Sequence[str]) -> int:
        """The decoder prompt width (start token + pieces), checked against the model."""
        exp = self.run.exp
        width = max(len(exp.vocab.encode_with_sentinels(p)) + 1 for p in prompts)
        rounded = -(-width // self.width_multiple) * self.width_multiple
        try:
            exp.family.check_prompt_fits(rounded, self.config.max_new_tokens, exp.model_config)
        except ValueError:
            exp.family.check_prompt_fits(width, self.config.max_new_tokens, exp.model_config)
            return width
        return rounded

    def __call__(self, prompts: Sequence[str]) -> list[dict[str, Any]]:
        """[{"prompt", "output", "score", "tokens"}] for each prompt, in order; "prompt" is the
        text given, "score" None where the decoder's score is not finite (JSON has no NaN).
        A family that does not generate text gives `task_eval.predict_text`'s results."""
        exp = self.run.exp
        if not exp.family.generates_text:  # Encoder-only: the task's predictions instead.
            from t5x_like.experiment import task_eval

            return task_eval.predict_text(self.run, prompts, batch_size=self.batch_rows)
        fitted = [
            fit_prompt(exp, p, i, self.truncate, self.config.max_new_tokens)
            for i, p in enumerate(prompts)
        ]
        width = self._width(fitted)
        results: list[dict[str, Any]] = []
        with partitioning.activate(exp.mesh, exp.rules):
            for start in range(0, len(fitted), self.batch_rows):
                chunk = fitted[start : start + self.batch_rows]
                encoded = _encode(self.run, chunk, self.batch_rows, width)
                batch = partitioning.global_batch(
                    {k: v[self.rows] for k, v in encoded.items()}, exp.batch_sharding
                )
                out = jax.device_get(self._fn(self.run.params, batch))
                for row, prompt in enumerate(prompts[start : start + self.batch_rows]):
                    tokens = out.tokens[row, : out.lengths[row]].tolist()
                    score = float(out.scores[row])
                    results.append(
                        {
                            "prompt": prompt,
                            "output": exp.vocab.decode(tokens),
                            "score": score if math.isfinite(score) else None,
                            "tokens": tokens,
                        }
                    )
        return results


def generate_text(
    run: RestoredRun,
    prompts: Sequence[str],
    config: decoding.DecodeConfig,
    *,
    batch_size: int = 8,
    truncate: str = "off",
) -> list[dict[str, Any]]:
    """[{"prompt", "output", "score", "tokens"}] for each prompt, in order (see `Generator`).

    A family that does not generate text (encoder-only) predicts its task's outputs instead
    (`task_eval.predict_text`: masks filled, a label, tags or an answer per prompt).

    Raises:
      ValueError: a prompt longer than the model's context (with `truncate` "off"), or one
        that does not fit the model's positions with the new tokens.
    """
    if not run.exp.family.generates_text:
        from t5x_like.experiment import task_eval

        return task_eval.predict_text(run, prompts, batch_size=batch_size)
    return Generator(run, config, batch_size=batch_size, truncate=truncate)(prompts)
