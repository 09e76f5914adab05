"""Supervised fine-tuning (`data.task='sft'`): prompt/completion records -> decoder-only rows whose
loss covers the completion only.

An example is the prompt's tokens, then the completion's and EOS, as one causal-LM sequence
(`targets`; `inputs` = BOS + targets[:-1]); its loss mask is 0 on the prompt's target positions
and 1 on the completion's (EOS included). Rows have the causal_lm layout (`packing.KEYS`) with
`weights` = that mask, so no prompt token ever contributes to the loss; examples are packed
with segment ids (attention and positions restart per example, so nothing crosses examples) or
padded alone, by `packing.to_rows(..., loss_mask=True)`.

A record with a `messages` list instead (`{"messages": [{"role": "user", "content": ...}, ...]}`)
is a conversation rendered with the tokenizer's chat template, the loss on its assistant turns
(`data/chat.py`). Rows start with the tokenizer's BOS where it has one (imported models), else
the pad id 0 (our own vocabularies).

An example longer than `data.seq_len` is an error by default (`data.sft_too_long='error'`);
'truncate' keeps the prompt's last tokens (at most max(seq_len - completion, seq_len // 2)) and
the completion's first ones (a conversation: its first seq_len tokens), 'drop' skips it. Either
is logged with a running count per process, never silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from absl import logging

from t5x_like.data import chat, tokenizers
from t5x_like.data.preprocessors import BOS_ID

TOO_LONG = ("error", "truncate", "drop")
# A record with this field (and no prompt field) is a chat conversation (`data/chat.py`).
MESSAGES_KEY = "messages"


def _text(record: Any, key: str, role: str) -> str:
    if not isinstance(record, Mapping) or key not in record:
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise ValueError(
            f"SFT record has no {role} field {key!r} (data.{role}_key); it has {keys}."
        )
    value = record[key]
    if isinstance(value, bytes):  # TFDS text features
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"SFT record's {role} field {key!r} must be a string, got {value!r}.")
    return value


def fit_lengths(prompt: int, completion: int, seq_len: int) -> tuple[int, int]:
    """(prompt tokens kept, completion tokens kept) of a truncated example: the prompt keeps at
    most max(seq_len - completion, seq_len // 2) tokens, the completion the rest."""
    kept_prompt = min(prompt, max(seq_len - completion, seq_len // 2))
    return kept_prompt, min(completion, seq_len - kept_prompt)


def sft_example(
    prompt_ids: Any,
    completion_ids: Any,
    seq_len: int,
    too_long: str = "error",
    start_id: int = BOS_ID,
) -> dict[str, np.ndarray] | None:
    """The example {"inputs", "targets", "loss_mask"} of a prompt and a completion (EOS already
    appended), or None when it is too long and `too_long='drop'`. `inputs` start with
    `start_id` (the tokenizer's BOS where it has one: `tokenizers.start_ids`).

    Raises:
      ValueError: too long with `too_long='error'` (the message says what to set).
    """
    prompt, completion = list(prompt_ids), list(completion_ids)
    if not completion:
        raise ValueError("An SFT completion needs at least one token (its EOS).")
    n = len(prompt) + len(completion)
    if n > seq_len:
        if too_long == "drop":
            return None
        if too_long != "truncate":
            raise ValueError(
                f"An SFT example of {n} tokens (prompt {len(prompt)} + completion and EOS "
                f"{len(completion)}) exceeds data.seq_len={seq_len}: raise data.seq_len, or set "
                "data.sft_too_long='truncate' or 'drop'."
            )
        kept_prompt, kept_completion = fit_lengths(len(prompt), len(completion), seq_len)
        prompt = prompt[len(prompt) - kept_prompt :]
        completion = completion[:kept_completion]
    targets = np.asarray(prompt + completion, np.int32)
    return {
        "inputs": np.concatenate([np.asarray([start_id], np.int32), targets[:-1]]),
        "targets": targets,
        "loss_mask": np.asarray([0] * len(prompt) + [1] * len(completion), np.int32),
    }


def _should_log(count: int) -> bool:
    # The first ten, then every hundredth: a count that keeps growing, not a flood.
    return count <= 10 or count % 100 == 0


class SFTExamples(grain.experimental.FlatMapTransform):
    """grain flat map: a record -> [its SFT example], or [] when dropped.

    `dropped` and `truncated` count this process's examples so far; each is logged.
    """

    max_fan_out = 1

    def __init__(
        self, vocab: Any, seq_len: int, prompt_key: str, completion_key: str, too_long: str
    ):
        if too_long not in TOO_LONG:
            raise ValueError(f"data.sft_too_long={too_long!r} must be one of {TOO_LONG}.")
        self.vocab = vocab
        self.seq_len = seq_len
        self.prompt_key = prompt_key
        self.completion_key = completion_key
        self.too_long = too_long
        # Rows start with the tokenizer's BOS where it has one (imported models), else pad 0.
        (self.start_id,) = tokenizers.start_ids(vocab, fallback=BOS_ID)
        self.dropped = 0
        self.truncated = 0

    def _example(self, record: Any) -> tuple[dict[str, np.ndarray] | None, int]:
        """(the record's example or None, its token count)."""
        if isinstance(record, Mapping) and MESSAGES_KEY in record and self.prompt_key not in record:
            return chat.chat_example(
                self.vocab, record[MESSAGES_KEY], self.seq_len, self.start_id, self.too_long
            )
        prompt = self.vocab.encode(_text(record, self.prompt_key, "prompt"))
        completion = [*self.vocab.encode(_text(record, self.completion_key, "completion"))]
        completion.append(self.vocab.eos_id)
        example = sft_example(prompt, completion, self.seq_len, self.too_long, self.start_id)
        return example, len(prompt) + len(completion)

    def flat_map(self, record: Any) -> list[dict[str, np.ndarray]]:
        example, n = self._example(record)
        if example is None:
            self.dropped += 1
            if _should_log(self.dropped):
                logging.warning(
                    "SFT: dropped an example of %d tokens > data.seq_len=%d (%d dropped so far).",
                    n,
                    self.seq_len,
                    self.dropped,
                )
            return []
        if n > self.seq_len:
            self.truncated += 1
            if _should_log(self.truncated):
                logging.warning(
                    "SFT: truncated an example of %d tokens to data.seq_len=%d (%d truncated "
                    "so far).",
                    n,
                    self.seq_len,
                    self.truncated,
                )
        return [example]


def examples(
    docs: grain.MapDataset, vocab: Any, task: Any, read_options: grain.ReadOptions
) -> grain.IterDataset:
    """Records -> SFT examples of `task` (its seq_len, prompt_key, completion_key and
    sft_too_long)."""
    transform = SFTExamples(
        vocab, task.seq_len, task.prompt_key, task.completion_key, task.sft_too_long
    )
    return grain.experimental.FlatMapIterDataset(docs.to_iter_dataset(read_options), transform)
