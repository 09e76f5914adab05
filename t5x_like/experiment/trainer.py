"""The training loop: init or resume, train, log, evaluate and checkpoint.

`train` wires the stages built in `experiment.py`; each stage here is a small function.
Faults that must not lose work are handled by small modules it calls: the workdir lock and the
saved-config check (t5x_like/workdir.py), graceful stop on SIGTERM/SIGINT (preemption.py),
the non-finite step guard (nan_guard.py), and unreadable checkpoints / failed saves
(t5x_like/checkpointing.py).
"""

from __future__ import annotations

import math
import socket
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from t5x_like import checkpointing, host_memory, partitioning, storage, watchdog
from t5x_like import config as config_lib
from t5x_like import workdir as workdir_lib
from t5x_like.experiment import decode_eval, restore, task_eval
from t5x_like.experiment.assembly import (
    Experiment,
    build_experiment,
    evaluate,
    init_state,
    jit_steps,
    make_train_iterator,
    state_shardings,
)
from t5x_like.training import flops, losses, nan_guard, optimizers, preemption
from t5x_like.training.compilation import compile_count, enable_compilation_cache
from t5x_like.training.metrics_writer import MetricsWriter
from t5x_like.training.train_state import TrainState

# A progress line at least this often, whatever train.log_every is (a slow or loaded machine
# could otherwise print nothing for minutes).
PROGRESS_EVERY_S = 30.0


class _Throughput:
    """Tokens/s and MFU over the interval since the last reset."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak: float):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.reset()

    def reset(self) -> None:
        # Called right after each log line (train interval, eval, first step).
        self.start = self.last_line = time.perf_counter()
        self.steps = 0

    def progress_due(self) -> bool:
        """Whether PROGRESS_EVERY_S have passed since the last line of any kind."""
        return self.steps > 0 and time.perf_counter() - self.last_line >= PROGRESS_EVERY_S

    def log_progress(self, done: int, total: int, metrics: Any) -> None:
        """A progress line between train.log_every intervals (speed since the last log line,
        ETA); waits for step `done` so that the line never runs ahead of the device."""
        jax.block_until_ready(metrics)
        now = time.perf_counter()
        steps_per_sec = self.steps / max(now - self.start, 1e-9)
        logging.info(
            "step %d/%d (in progress: %.3g steps/s, %.0f tokens/s since the last log line) "
            "ETA %.0fs",
            done,
            total,
            steps_per_sec,
            steps_per_sec * self.tokens_per_step,
            (total - done) / steps_per_sec if steps_per_sec else math.nan,
        )
        self.last_line = now

    def report(self) -> dict[str, float]:
        """steps/s, tokens/s, achieved model FLOP/s and MFU (`mfu_invalid` above 100%)."""
        seconds = max(time.perf_counter() - self.start, 1e-9)
        tokens_per_sec = self.steps * self.tokens_per_step / seconds
        return {
            "steps_per_sec": self.steps / seconds,
            "tokens_per_sec": tokens_per_sec,
            **flops.mfu_metrics(tokens_per_sec, self.flops_per_token, self.peak),
        }


def _summarize_train(fetched: list[dict[str, Any]]) -> dict[str, float]:
    """Means over the logged steps' host metrics (losses weighted by tokens, grad norm per step)."""
    sums = {k: float(sum(m[k] for m in fetched)) for k in fetched[0] if k != "grad_norm"}
    out = losses.summarize(sums)
    out["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
    return out


def _log_train(done: int, total: int, metrics: dict[str, float], writer: MetricsWriter) -> None:
    eta = (total - done) / metrics["steps_per_sec"] if metrics.get("steps_per_sec") else math.nan
    # MFU as a fraction, like every rate in every sink. Above 1 (mfu_invalid) it is a wrong
    # peak, warned about once (training/flops.py): never shown as a result.
    mfu = "invalid" if "mfu_invalid" in metrics else f"{metrics.get('mfu', math.nan):.4f}"
    logging.info(
        "step %d/%d loss %.4f acc %.3f ppl %.2f grad_norm %.3f lr %.2e | %.0f tokens/s "
        "%.3g FLOP/s mfu %s ETA %.0fs",
        done,
        total,
        metrics["loss"],
        metrics["accuracy"],
        metrics["perplexity"],
        metrics["grad_norm"],
        metrics["learning_rate"],
        metrics.get("tokens_per_sec", math.nan),
        metrics.get("model_flops_per_sec", math.nan),
        mfu,
        eta,
    )
    writer.write(done, "train", metrics)


def _init_from_pretrained(exp: Experiment, state: TrainState, abstract_params: Any) -> TrainState:
    """`state` with its params replaced by those of `train.init_from` (optimizer kept fresh)."""
    train_cfg = exp.cfg.train
    directory = restore.init_from_dir(train_cfg.init_from, train_cfg.init_step)
    source = checkpointing.Checkpointer(directory, read_only=True)
    try:
        # The params both models have (encoder, embeddings); a new head keeps its fresh init.
        loaded, names, new = source.restore_shared_params(train_cfg.init_step, abstract_params)
    finally:
        source.close()
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: loaded.get("/".join(partitioning.path_names(path)), x), state.params
    )
    logging.info(
        "Initialised params from %s (optimizer state fresh): %d loaded (%s); %d new, "
        "initialised fresh (%s).",
        directory,
        len(names),
        ", ".join(names),
        len(new),
        ", ".join(new) or "none",
    )
    return state.replace(params=params)


def _restore_or_init(
    exp: Experiment, checkpointer: checkpointing.Checkpointer, train_iter: Any
) -> tuple[TrainState, int | None]:
    """(state, the checkpoint step it was restored from or None): the newest readable
    checkpoint's state (iterator repositioned; unreadable newer ones are moved aside), else a
    fresh sharded init whose params come from `train.init_from` when set (fine-tuning)."""
    abstract_state, shardings = state_shardings(exp)
    restored = checkpointer.restore_latest(abstract_state, train_iter)
    if restored is not None:
        step, state = restored
        logging.info("Resumed from %s/%d.", checkpointer.directory, step)
        return state, step
    state = init_state(exp, shardings)
    if exp.cfg.train.init_from:
        state = _init_from_pretrained(exp, state, abstract_state.params)
    return state, None


def _first_step(
    exp: Experiment,
    checkpointer: checkpointing.Checkpointer,
    train_iter: Any,
    jit_train: Any,
    state: TrainState,
    restored_from: int | None,
    abstract_state: TrainState | None,
) -> tuple[int, TrainState, Any]:
    """(the step it started from, the state after it, its metrics) of the run's first step.

    A restored state whose first step is not finite is suspect (damage the checksums cannot
    see, or a state saved by an older version): the checkpoint before it is tried, and the
    suspect one is moved aside only once that older one's first step is finite. When both
    fail, the cause is the data or the settings, not the checkpoints: nothing is moved.
    `restored_from`: the checkpoint step of a restored `state` (None for a fresh one);
    `abstract_state`: where a restore lands.
    """
    step = int(jax.device_get(state.step))
    batch = partitioning.global_batch(next(train_iter), exp.batch_sharding)
    state, metrics = jit_train(state, batch)
    if restored_from is None or nan_guard.is_finite(jax.device_get(metrics)):
        return step, state, metrics
    step = restored_from
    directory = checkpointer.directory
    logging.warning(
        "The state restored from %s/%d gives a non-finite step %d; trying the checkpoint "
        "before it.",
        directory,
        step,
        step + 1,
    )
    older = checkpointer.restore_latest(abstract_state, train_iter, below=step)
    if older is None:
        raise nan_guard.NonFiniteError(
            f"The state restored from {directory}/{step} gives a non-finite loss on its first "
            f"step (step {step + 1}) and there is no older checkpoint to try; nothing was moved. "
            "Check the data and the optimizer settings (optimizer.learning_rate), or start "
            "afresh in a new --workdir."
        )
    older_step, older_state = older
    new_state, metrics = jit_train(
        older_state, partitioning.global_batch(next(train_iter), exp.batch_sharding)
    )
    if not nan_guard.is_finite(jax.device_get(metrics)):
        raise nan_guard.NonFiniteError(
            f"The states of {directory}/{step} and of the checkpoint before it "
            f"({directory}/{older_step}) both give a non-finite loss on their first step, so "
            "the cause is the data or the settings, not the checkpoints; nothing was moved. "
            "Lower optimizer.learning_rate (or set optimizer.grad_clip_norm) and relaunch."
        )
    checkpointer.move_aside(step, f"its state gives a non-finite step {step + 1}")
    return older_step, new_state, metrics


def _describe_model(exp: Experiment, state: TrainState) -> _Throughput:
    """Logs the model's size and FLOPs; the throughput meter counts every side's tokens
    (encoder + decoder for encoder-decoder models)."""
    cfg, task = exp.cfg, exp.task
    row_tokens = exp.family.tokens_per_row(task)
    flops_per_token = exp.family.train_flops_per_token(state.params, exp.model_config, task)
    peak, peak_source = flops.peak_flops(cfg.model.dtype, given=cfg.train.get("peak_flops"))
    logging.info(
        "Model: %s parameters, %.3g train FLOPs/token; peak %.3g FLOP/s (%s).",
        f"{flops.param_count(state.params):,}",
        flops_per_token,
        peak,
        peak_source,
    )
    return _Throughput(cfg.train.batch_size * row_tokens, flops_per_token, peak)


def _eval_and_log(
    exp: Experiment,
    steps: dict[str, Any],
    state: TrainState,
    step: int,
    writer: MetricsWriter,
    workdir: str,
) -> dict[str, float]:
    """Teacher-forced metrics, plus decoded-text metrics when train.decode_batches > 0."""
    metrics = evaluate(exp, steps["eval"], state.params)
    if "task" in steps:  # Fine-tuning: the task's metrics (experiment/task_eval.py).
        metrics.update(task_eval.evaluate(exp, steps["task"], state.params))
    if "decode" in steps:
        scores, examples = decode_eval.evaluate_decodes(exp, steps["decode"], state.params)
        metrics.update(scores)
        if examples and jax.process_index() == 0:
            path = storage.join(workdir, "decodes", f"step_{step}.jsonl")
            decode_eval.write_jsonl(path, examples)
            for example in examples[:3]:
                logging.info("decoded: %r -> %r (target %r)", *example.values())
    logging.info("step %d eval: %s", step, _format(metrics))
    writer.write(step, "eval", metrics)
    return metrics


def _due(done: int, every: int, total: int) -> bool:
    return every > 0 and (done % every == 0 or done == total)


def _has_checkpoints(workdir: str) -> bool:
    directory = storage.join(workdir, "checkpoints")
    return any(name.isdigit() for name in storage.listdir(directory))


def train(cfg: config_dict.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the experiment in `workdir`; returns the last train and eval metrics.

    The result's "stopped" entry is set when a SIGTERM/SIGINT ended the run early (after
    checkpointing the step it reached); a relaunch resumes from there.

    Raises:
      WorkdirLockedError: another live run uses `workdir`.
      ConfigChangeError: the workdir's checkpoints were made with another model shape.
      NonFiniteError: a non-finite step (train.nan_policy); the bad state was not saved.
      CheckpointSaveError: a checkpoint could not be written.
    """
    workdir = storage.resolve(workdir)
    if cfg.train.init_from and not _has_checkpoints(workdir):
        # A fine-tuning source that cannot be read, or whose model computes another function,
        # fails here, before anything compiles.
        source = restore.init_from_dir(cfg.train.init_from, cfg.train.init_step)
        nested = storage.basename(source) == "checkpoints"
        workdir_lib.check_init_from_config(cfg, storage.dirname(source) if nested else source)
    enable_compilation_cache(cfg.train.compilation_cache_dir)
    exp = build_experiment(cfg)
    logging.info("Resolved config:\n%s", config_lib.to_json(cfg))
    logging.info(
        "Mesh %s over %d devices, %d process(es); host malloc: %s.",
        dict(exp.mesh.shape),
        jax.device_count(),
        jax.process_count(),
        host_memory.describe(),
    )
    if jax.process_index() == 0:
        storage.makedirs(workdir)
    with workdir_lib.WorkdirLock(workdir):
        # Before anything compiles or restores: a changed model shape is refused here.
        workdir_lib.check_config_change(cfg, workdir)
        train_cfg = cfg.train
        checkpointer = checkpointing.Checkpointer(
            storage.join(workdir, "checkpoints"),
            max_to_keep=train_cfg.max_to_keep,
            async_save=train_cfg.async_checkpoint,
        )
        host = f"host {socket.gethostname()} process {jax.process_index()}/{jax.process_count()}"
        # The watchdog writes its dump with local file calls, and a stuck upload may be why
        # it fires: into the workdir when it is on this disk, else this host's temp dir (the
        # one line names the file).
        dump_dir = tempfile.gettempdir() if storage.is_remote(workdir) else workdir
        watch = watchdog.Watchdog(train_cfg.watchdog_s, host=host, dump_dir=dump_dir)
        with watch, preemption.PreemptionGuard() as stop_signal:
            # Closed however the run ends: pending saves finish, no writer thread is left.
            try:
                return _train_loop(exp, checkpointer, workdir, stop_signal, watch)
            finally:
                watch.set_phase("the wait for the last checkpoint save")
                checkpointer.close()


class _Progress:
    """What the loop carries between steps: the unlogged steps' metrics and the guards."""

    def __init__(self, exp: Experiment, checkpointer: checkpointing.Checkpointer, workdir: str):
        self.exp = exp
        self.checkpointer = checkpointer
        self.writer = MetricsWriter(workdir)
        self.guard = nan_guard.NanGuard(exp.cfg.train.nan_policy)
        self.pending: list[tuple[int, Any]] = []  # (step, device metrics) not logged yet.

    def resume_hint(self) -> str:
        latest = self.checkpointer.latest_step()
        if latest is None:
            return "training starts from scratch (no checkpoint yet)"
        return f"training resumes from step {latest} ({self.checkpointer.directory}/{latest})"

    def fetch_and_check(self) -> list[tuple[int, dict[str, Any]]]:
        """The pending steps' host metrics, checked by the NaN guard (skips logged)."""
        steps = [step for step, _ in self.pending]
        records = list(zip(steps, jax.device_get([m for _, m in self.pending]), strict=True))
        skipped = self.guard.check(records, self.resume_hint())
        if skipped:
            logging.warning(
                "Skipped the update of step(s) %s: non-finite loss or gradient norm "
                "(train.nan_policy='skip').",
                skipped,
            )
        return records

    def save(self, step: int, state: TrainState, train_iter: Any) -> None:
        """Checkpoints `state` (the state after `step`) once its steps are known finite, with
        the metrics of the steps no log line has covered yet."""
        records = self.fetch_and_check()
        self.checkpointer.save(step, state, train_iter, unlogged_metrics=records)

    def restore_unlogged(self, step: int) -> None:
        """Takes up the unlogged steps saved with checkpoint `step`: the next log interval
        covers the same steps as it would have without the interruption."""
        self.pending = list(self.checkpointer.unlogged_metrics(step))


def _log_interval(
    progress: _Progress,
    state: TrainState,
    throughput: _Throughput,
    step: int,
    with_throughput: bool,
) -> dict[str, float]:
    """Logs and writes the means of the pending steps (non-finite, skipped ones left out);
    `with_throughput`: False while the interval holds only the compiling first step."""
    exp = progress.exp
    records = progress.fetch_and_check()
    finite = [m for _, m in records if nan_guard.is_finite(m)]
    progress.pending = []
    metrics = _summarize_train(finite) if finite else {}
    if with_throughput:
        metrics.update(throughput.report())
    metrics["learning_rate"] = float(exp.schedule(step - 1))
    metrics["compiles"] = compile_count()
    skipped = optimizers.skipped_updates(state.opt_state)
    if skipped is not None:
        metrics["skipped_updates"] = int(jax.device_get(skipped))
    if finite:
        _log_train(step, exp.cfg.train.steps, metrics, progress.writer)
    else:
        logging.warning("step %d: every update since the last log was skipped.", step)
        progress.writer.write(step, "train", metrics)
    throughput.reset()
    return metrics


def _stop_early(
    progress: _Progress, state: TrainState, train_iter: Any, step: int, signal_name: str
) -> dict[str, float]:
    """After a stop signal: checkpoint `step` (unless it has one) with the steps since the last
    log line, wait until it is on disk, and show (not write) their means: the resumed run
    writes the interval as a whole. Returns those means."""
    checkpointer = progress.checkpointer
    progress.save(step, state, train_iter)
    checkpointer.wait_until_finished()
    finite = [m for _, m in progress.fetch_and_check() if nan_guard.is_finite(m)]
    progress.pending = []
    metrics = _summarize_train(finite) if finite else {}
    if metrics:
        logging.info(
            "steps since the last log (written with the interval after the resume): loss %.4f",
            metrics["loss"],
        )
    logging.warning(
        "Stopped by %s after step %d of %d; checkpoint %s/%d is on disk. Relaunch the same "
        "command to resume from it.",
        signal_name,
        step,
        progress.exp.cfg.train.steps,
        checkpointer.directory,
        step,
    )
    return metrics


def _train_loop(
    exp: Experiment,
    checkpointer: checkpointing.Checkpointer,
    workdir: str,
    stop_signal: preemption.PreemptionGuard,
    watch: watchdog.Watchdog,
) -> dict[str, Any]:
    """Restores or initialises the state, then trains, logs, evaluates and checkpoints."""
    train_cfg = exp.cfg.train
    train_iter = make_train_iterator(exp)
    state, restored_from = _restore_or_init(exp, checkpointer, train_iter)
    # Only now is the resume accepted (the state and the data position restored): a refused
    # or failed one leaves the workdir's config.json as the checkpoints' config.
    if jax.process_index() == 0:
        workdir_lib.save_config(exp.cfg, workdir)
    start_step = int(jax.device_get(state.step))
    throughput = _describe_model(exp, state)
    state_shards = jax.tree.map(lambda x: x.sharding, state)
    jit_train, jit_eval = jit_steps(exp, state_shards)
    eval_steps = {"eval": jit_eval}
    if train_cfg.decode_batches:
        eval_steps["decode"] = decode_eval.jit_decode(exp, state_shards.params)
    if task_eval.applies(exp):
        eval_steps["task"] = task_eval.jit_predict(exp, state_shards.params)
    progress = _Progress(exp, checkpointer, workdir)
    result: dict[str, Any] = {"start_step": start_step, "train": {}, "eval": {}}
    run_start = time.perf_counter()
    # Built outside the mesh context: where a fallback restore lands (see _first_step).
    abstract_state = state_shardings(exp)[0] if restored_from is not None else None

    with partitioning.activate(exp.mesh, exp.rules):
        if start_step == 0 and train_cfg.eval_every and train_cfg.eval_at_start:
            result["eval"] = _eval_and_log(exp, eval_steps, state, 0, progress.writer, workdir)
        step = start_step
        while step < train_cfg.steps:
            if step == start_step:
                if stop_signal.should_stop(step):
                    # Signalled while restoring or compiling: nothing new to save.
                    logging.warning("Stopped by %s before step %d.", stop_signal.reason, step + 1)
                    result["stopped"] = {"step": step, "signal": stop_signal.reason}
                    break
                step, state, metrics = _first_step(
                    exp, checkpointer, train_iter, jit_train, state, restored_from, abstract_state
                )
                start_step = result["start_step"] = step
                if restored_from is not None:
                    progress.restore_unlogged(step)
                # The first step includes compilation: report it, keep it out of throughput.
                jax.block_until_ready(metrics)
                logging.info(
                    "First step took %.1fs (compilation included).", time.perf_counter() - run_start
                )
                throughput.reset()
                watch.arm()  # Later steps, evals and saves must not take a compile's time.
            else:
                watch.set_phase("train step", step + 1)
                batch = partitioning.global_batch(next(train_iter), exp.batch_sharding)
                state, metrics = jit_train(state, batch)
                throughput.steps += 1
            step = done = step + 1
            progress.pending.append((done, metrics))
            checkpointer.check_for_errors()  # A failed background save stops the run here.
            if _due(done, train_cfg.log_every, train_cfg.steps):
                result["train"] = _log_interval(
                    progress, state, throughput, done, with_throughput=done > start_step + 1
                )
            elif throughput.progress_due():
                throughput.log_progress(done, train_cfg.steps, metrics)
            if stop_signal.should_stop(done):
                with watch.phase("the checkpoint save after a stop signal", done):
                    shown = _stop_early(progress, state, train_iter, done, stop_signal.reason)
                result["train"] = shown or result["train"]
                result["stopped"] = {"step": done, "signal": stop_signal.reason}
                break
            if _due(done, train_cfg.eval_every, train_cfg.steps):
                with watch.phase("evaluation", done):
                    result["eval"] = _eval_and_log(
                        exp, eval_steps, state, done, progress.writer, workdir
                    )
                throughput.reset()
            if _due(done, train_cfg.checkpoint_every, train_cfg.steps):
                with watch.phase("checkpoint save", done):
                    progress.save(done, state, train_iter)
    progress.writer.close()
    if "stopped" not in result:
        logging.info(
            "Done: step %d in %.1fs; outputs in %s.",
            train_cfg.steps,
            time.perf_counter() - run_start,
            workdir,
        )
    return result


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
