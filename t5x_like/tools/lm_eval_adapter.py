"""An lm-evaluation-harness model that drives a t5x_like decoder-only workdir.

    import lm_eval
    from t5x_like.tools import lm_eval_adapter  # registers the model name "t5x_like"

    lm = lm_eval_adapter.T5xLikeLM(workdir="/tmp/run", batch_size=8)
    lm_eval.simple_evaluate(model=lm, tasks=["my_task"], task_manager=...)
    # or, by name: lm_eval.simple_evaluate(model="t5x_like", model_args="workdir=/tmp/run", ...)

The checkpoint is restored onto this machine's mesh (experiment/restore.py, the run's own
config.json with any overrides); `loglikelihood` and `loglikelihood_rolling` run through
experiment/scoring.py (requests packed into fixed-shape rows, harness-style encoding and
rolling windows), `generate_until` through t5x_like.decoding (experiment/inference.py) with
the text cut at the first stop sequence. Single process.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from t5x_like import decoding
from t5x_like.experiment import inference, restore, scoring
from t5x_like.workdir_flags import SAVED_RUN_CONFIG

MODEL_NAME = "t5x_like"


def saved_run_config(workdir: str) -> Any:
    """The run's config.json as a ConfigDict (configs/saved_run.py, what the scripts load)."""
    spec = importlib.util.spec_from_file_location("t5x_like_saved_run", SAVED_RUN_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(workdir)


def _as_int(value: Any, name: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer.") from None


@register_model(MODEL_NAME)
class T5xLikeLM(LM):
    """The `LM` of checkpoint `step` (None: the latest) of a decoder-only `workdir`.

    Args:
      workdir: a training workdir (config.json, checkpoints/).
      step: the checkpoint; None: the latest.
      batch_size: rows per forward pass / prompts per generation batch.
      seq_len: tokens per scoring row (the rolling window); None: the run's data.seq_len.
      max_gen_toks: generate_until's default token budget (a request's `max_gen_toks` wins).
      config: the config to restore with (e.g. another mesh); None: the run's own.
    """

    def __init__(
        self,
        workdir: str,
        step: int | str | None = None,
        batch_size: int | str = 8,
        seq_len: int | str | None = None,
        max_gen_toks: int | str = 32,
        config: Any = None,
        **unused: Any,
    ):
        super().__init__()
        cfg = saved_run_config(workdir) if config is None else config
        self.run = restore.restore_run(cfg, workdir, step=_as_int(step, "step"))
        self._forward, multiple = scoring.run_forward(self.run)
        batch_size = _as_int(batch_size, "batch_size") or 1
        self.batch_size = batch_size
        self.batch_rows = -(-batch_size // multiple) * multiple
        self.seq_len = _as_int(seq_len, "seq_len") or self.run.exp.task.seq_len
        self.max_gen_toks = _as_int(max_gen_toks, "max_gen_toks")
        self.vocab = self.run.exp.vocab

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) of each request's (context, continuation)."""
        if not requests:
            return []
        encoded = [scoring.encode_pair(self.vocab, *r.args[:2]) for r in requests]
        scores = scoring.score_requests(self._forward, encoded, self.seq_len, self.batch_rows)
        return [
            (float(x), bool(g)) for x, g in zip(scores.loglikelihoods, scores.greedy, strict=True)
        ]

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """The log-likelihood of each request's whole string, in rolling windows of seq_len."""
        if not requests:
            return []
        texts = [r.args[0] for r in requests]
        report = scoring.score_documents(
            self._forward, self.vocab, texts, seq_len=self.seq_len, batch_rows=self.batch_rows
        )
        return [float(x) for x in report["loglikelihoods"]]

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Each request's continuation of its context, greedy unless `do_sample`, cut before the
        first of its `until` strings."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, request in enumerate(requests):
            kwargs = dict(request.args[1] or {})
            sample = bool(kwargs.get("do_sample", False))
            key = (
                int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                sample,
                float(kwargs.get("temperature", 1.0)) if sample else 1.0,
            )
            groups.setdefault(key, []).append(i)
        for (max_new, sample, temperature), indices in groups.items():
            config = decoding.DecodeConfig(
                strategy="sample" if sample else "greedy",
                max_new_tokens=max_new,
                temperature=temperature,
            )
            prompts = [requests[i].args[0] for i in indices]
            outputs = inference.generate_text(self.run, prompts, config, batch_size=self.batch_size)
            for i, output in zip(indices, outputs, strict=True):
                results[i] = _cut(output["output"], (requests[i].args[1] or {}).get("until"))
        return [r or "" for r in results]


def _cut(text: str, until: Any) -> str:
    """`text` up to the first occurrence of any stop string."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text
