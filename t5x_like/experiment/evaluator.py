"""Evaluates a saved checkpoint on this run's devices and mesh: `evaluate_checkpoint`.

The params alone are restored (the optimizer state is never read), directly into the shardings
of the mesh the config asks for on these devices, which need not be the training run's mesh.
The metrics are the trainer's: teacher-forced loss, cross-entropy, perplexity and token accuracy
over a split (`experiment.evaluate`), and, with decode batches, accuracy, exact match, BLEU and
ROUGE-L of decoded text (`decode_eval`: encoder-decoder runs, decoder-only SFT runs). Bad input
(no such workdir, step or split, a mesh that does not fit the devices) fails with a clear error
before anything is compiled.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import config_dict

from t5x_like import config as config_lib
from t5x_like import models, partitioning, storage
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import decode_eval, restore, task_eval


def eval_config(
    cfg: config_dict.ConfigDict,
    *,
    split: str | None = None,
    num_batches: int | None = None,
    decode_batches: int | None = None,
) -> config_dict.ConfigDict:
    """A copy of `cfg` with the eval settings of `evaluate_checkpoint`.

    `split` becomes data.eval_split and `decode_batches` train.decode_batches (None: keep the
    config's); `num_batches` becomes train.eval_batches (None or 0: the whole split, whatever
    the config says). The experiment's eval iterators read them there.
    """
    for name, value in (("num_batches", num_batches), ("decode_batches", decode_batches)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise config_lib.ConfigError(f"{name}={value!r} must be an integer >= 0.")
    cfg = copy.deepcopy(cfg)
    with cfg.unlocked():
        if split is not None:
            cfg.data.eval_split = split
        cfg.train.eval_batches = num_batches or 0
        if decode_batches is not None:
            cfg.train.decode_batches = decode_batches
    models.get(cfg.model.family).check_decode_batches(
        cfg.train.decode_batches, cfg.data.get("task", None)
    )
    return cfg


class _CountingEvalStep:
    """An eval step that also counts the batches and examples (packed segments) it sees.

    The count runs on the global batch, so it covers every process's rows.
    """

    def __init__(self, exp: experiment.Experiment, eval_step: Any):
        self._eval_step = eval_step
        self._key = exp.family.segment_ids_key
        # Segment ids are 1..k in a row of k examples (0 on padding): a row's max counts them.
        self._count = jax.jit(
            lambda ids: jnp.sum(jnp.max(ids, axis=-1)),
            in_shardings=exp.batch_sharding,
            out_shardings=partitioning.replicated(exp.mesh),
        )
        self._counts: list[jax.Array] = []

    def __call__(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        self._counts.append(self._count(batch[self._key]))
        return self._eval_step(params, batch)

    @property
    def batches(self) -> int:
        return len(self._counts)

    @property
    def examples(self) -> int:
        return int(sum(int(c) for c in jax.device_get(self._counts)))


def default_output(workdir: str, step: int) -> str:
    return storage.join(storage.resolve(workdir), "eval", f"step_{step}.json")


def evaluate_checkpoint(
    cfg: config_dict.ConfigDict,
    workdir: str,
    *,
    step: int | None = None,
    split: str | None = None,
    num_batches: int | None = None,
    decode_batches: int | None = None,
    output: str | None = None,
    devices: list[jax.Device] | None = None,
) -> dict[str, Any]:
    """Evaluates checkpoint `step` of `workdir` with `cfg` on `devices`; returns the report.

    Args:
      cfg: the experiment config (normally the workdir's config.json, see
        configs/saved_run.py); its mesh section is resolved against `devices`.
      workdir: a training workdir (config.json and checkpoints/).
      step: the checkpoint's step; None: the latest.
      split: the split to evaluate; None: the config's data.eval_split.
      num_batches: batches of train.batch_size rows to evaluate; None or 0: the whole split.
      decode_batches: batches to decode for text metrics (encoder-decoder, or decoder-only
        on data.task='sft': prompt -> completion); None: the config's train.decode_batches.
      output: where process 0 writes the JSON report; None: `<workdir>/eval/step_<N>.json`.
        With decodes, they go next to it (`step_<N>.decodes.jsonl`).
      devices: the devices to evaluate on; None: all of this run's.

    Returns:
      The report (also written to `output`): metrics (loss, cross_entropy, z_loss, accuracy,
      perplexity, tokens, and decode_* with decode batches), step, split, workdir, checkpoint,
      mesh, device_count, examples, tokens, batches, wall_time_s and more.

    Raises:
      FileNotFoundError: no such workdir, config.json, checkpoints/ or step.
      config.ConfigError: a config that does not fit the devices, no such split, params that
        do not fit the config's model.
    """
    start = time.perf_counter()
    cfg = eval_config(cfg, split=split, num_batches=num_batches, decode_batches=decode_batches)
    run = restore.restore_run(
        cfg, workdir, step=step, devices=devices, splits_needed=(cfg.data.eval_split,)
    )
    exp, params, step, workdir = run.exp, run.params, run.step, run.workdir
    devices = list(exp.mesh.devices.flat)
    restored = time.perf_counter()

    # Only the eval step is compiled (jit is lazy): never the train step.
    _, jit_eval = experiment.jit_steps(exp, experiment.state_shardings(exp)[1])
    eval_step = _CountingEvalStep(exp, jit_eval)
    examples: list[dict[str, str]] = []
    with partitioning.activate(exp.mesh, exp.rules):
        metrics = experiment.evaluate(exp, eval_step, params)
        if task_eval.applies(exp):  # Fine-tuning: the task's metrics, e.g. task_accuracy.
            predict = task_eval.jit_predict(exp, run.param_shardings)
            metrics.update(task_eval.evaluate(exp, predict, params))
        if cfg.train.decode_batches:
            decode_fn = decode_eval.jit_decode(exp, run.param_shardings)
            scores, examples = decode_eval.evaluate_decodes(exp, decode_fn, params)
            metrics.update(scores)
    end = time.perf_counter()

    output = storage.resolve(output) if output else default_output(workdir, step)
    report = {
        "workdir": workdir,
        "checkpoint": run.checkpoint,
        "step": step,
        "split": cfg.data.eval_split,
        "dataset": cfg.data.dataset,
        "metrics": metrics,
        "examples": eval_step.examples,
        "tokens": int(metrics.get("tokens", 0)),
        "batches": eval_step.batches,
        "batch_size": cfg.train.batch_size,
        "decode_batches": cfg.train.decode_batches,
        "mesh": {k: int(v) for k, v in exp.mesh.shape.items()},
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "platform": devices[0].platform,
        "load_time_s": restored - start,
        "eval_time_s": end - restored,
        "wall_time_s": end - start,
        "output": output,
    }
    if examples:
        report["decodes"] = os.path.splitext(output)[0] + ".decodes.jsonl"
    if jax.process_index() == 0:
        storage.write_json(output, report)
        if examples:
            decode_eval.write_jsonl(report["decodes"], examples)
    return report


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the console: where, what and the metrics."""
    mesh = " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [
        f"{report['checkpoint']} on split {report['split']!r}: {report['examples']:,} examples, "
        f"{report['tokens']:,} tokens in {report['batches']} batches",
        f"mesh {mesh} ({report['device_count']} {report['platform']} devices), "
        f"{report['wall_time_s']:.1f}s (loading {report['load_time_s']:.1f}s)",
    ]
    lines += [f"  {k:<20} {v:.6g}" for k, v in report["metrics"].items()]
    lines.append(f"report: {report['output']}")
    return "\n".join(lines)
