"""The training loop: build the experiment from its config, init or resume, train, eval, save.

Each stage is a small function; `train` wires them. Nothing here compiles before the config, the
mesh, the data and the vocabulary have been checked.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from ml_collections import config_dict

from t5x_like import checkpointing, partitioning
from t5x_like import config as config_lib
from t5x_like.layers.config import TransformerConfig
from t5x_like.models import build_model
from t5x_like.training import flops, losses, optimizers, steps
from t5x_like.training.metrics_writer import MetricsWriter
from t5x_like.training.train_state import TrainState

_COMPILES = {"count": 0}


def _count_compiles(event: str, duration: float, **kwargs: Any) -> None:
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES["count"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def compile_count() -> int:
    """Number of XLA backend compilations in this process so far (cache hits excluded)."""
    return _COMPILES["count"]


def enable_compilation_cache(cache_dir: str) -> None:
    """Turns on JAX's persistent compilation cache so relaunches skip XLA compilation."""
    if not cache_dir:
        return
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


@dataclasses.dataclass
class Experiment:
    """Everything built from the config before any state exists."""

    cfg: config_dict.ConfigDict
    mesh: jax.sharding.Mesh
    rules: partitioning.Rules
    splits: dict[str, Any]
    vocab: Any  # t5x_like.data.vocab.SentencePieceVocab
    model: nn.Module
    model_config: TransformerConfig
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    batch_sharding: jax.sharding.NamedSharding


def _resolve_vocab_size(cfg: config_dict.ConfigDict, vocab_size: int) -> None:
    """Fills model.vocab_size (rounded up to 128 for sharding) or checks the given one."""
    with cfg.unlocked():
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = int(math.ceil(vocab_size / 128) * 128)
        elif cfg.model.vocab_size < vocab_size:
            raise config_lib.ConfigError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary "
                f"({vocab_size} ids): raise model.vocab_size or leave it unset (None)."
            )


def build_experiment(cfg: config_dict.ConfigDict) -> Experiment:
    """Validates the config, then loads data sources and the vocabulary and assembles the rest."""
    # Imported here: TFDS is only needed once there is data to read.
    from t5x_like.data import sources
    from t5x_like.data import vocab as vocab_lib

    config_lib.validate_config(cfg, jax.device_count(), jax.process_count())
    data = cfg.data
    splits = sources.prepare_dataset(data.dataset, data.data_dir)
    for split in (data.train_split, data.eval_split if cfg.train.eval_every else None):
        if split is not None and split not in splits:
            raise config_lib.ConfigError(
                f"Dataset {data.dataset!r} has no split {split!r}; it has {sorted(splits)}. "
                "Set data.train_split / data.eval_split."
            )
    vocab = vocab_lib.load_or_train_vocab(
        data.vocab_path,
        data_dir=data.data_dir,
        dataset_name=data.dataset,
        split=data.train_split,
        vocab_size=data.vocab_size,
    )
    return assemble_experiment(cfg, splits=splits, vocab=vocab)


def assemble_experiment(
    cfg: config_dict.ConfigDict,
    *,
    splits: dict[str, Any] | None = None,
    vocab: Any = None,
    devices: list[jax.Device] | None = None,
) -> Experiment:
    """Mesh, model and optimizer for `cfg` on `devices` (default: all), given data and vocab.

    Without a vocabulary, model.vocab_size must be set in the config (tests use this).
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh_shape = config_lib.validate_config(cfg, len(devices), jax.process_count())
    rules = partitioning.rules_from_config(cfg.partitioning.rules)
    mesh = partitioning.make_mesh(mesh_shape, devices)
    if vocab is not None:
        _resolve_vocab_size(cfg, vocab.vocab_size)
    elif cfg.model.vocab_size is None:
        raise config_lib.ConfigError("model.vocab_size must be set when no vocabulary is given.")
    model = build_model(cfg.model)
    tx, schedule = optimizers.make_optimizer(cfg.optimizer, cfg.train.steps)
    return Experiment(
        cfg=cfg,
        mesh=mesh,
        rules=rules,
        splits=splits or {},
        vocab=vocab,
        model=model,
        model_config=model.config,
        tx=tx,
        schedule=schedule,
        batch_sharding=partitioning.batch_sharding(mesh, rules),
    )


def _init_boxed_params(exp: Experiment, rng: jax.Array) -> Any:
    # A [batch, 1] dummy input: enough to create every parameter, cheap to trace.
    tokens = jnp.zeros((exp.cfg.train.batch_size, 1), jnp.int32)
    with nn.logical_axis_rules(exp.rules):
        return exp.model.init(rng, tokens)["params"]


def state_shardings(exp: Experiment) -> tuple[TrainState, TrainState]:
    """(abstract state, its shardings), from shapes alone: nothing is allocated or compiled."""
    rng = jax.random.PRNGKey(exp.cfg.seed)
    boxed = jax.eval_shape(lambda r: _init_boxed_params(exp, r), rng)
    param_shardings = partitioning.params_shardings(boxed, exp.mesh, exp.rules)
    abstract_params = nn.unbox(boxed)
    partitioning.check_divisible(abstract_params, param_shardings)
    abstract_opt = jax.eval_shape(exp.tx.init, abstract_params)
    opt_shardings = partitioning.opt_state_shardings(
        abstract_opt, abstract_params, param_shardings, exp.mesh
    )
    rep = partitioning.replicated(exp.mesh)
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=abstract_params,
        opt_state=abstract_opt,
        rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype),
    )
    shardings = TrainState(step=rep, params=param_shardings, opt_state=opt_shardings, rng=rep)
    return checkpointing.abstract_like(abstract, shardings), shardings


def init_state(exp: Experiment, shardings: TrainState) -> TrainState:
    """Initialises the state directly into its shardings (no full copy on one device)."""
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(exp.cfg.seed))

    def init(rng: jax.Array) -> TrainState:
        params = nn.unbox(_init_boxed_params(exp, rng))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=exp.tx.init(params),
            rng=dropout_rng,
        )

    # No mesh context here: flax would constrain DenseGeneral kernels while they are still
    # flattened to 2-D inside their initialiser; out_shardings place the result instead.
    return jax.jit(init, out_shardings=shardings)(init_rng)


def make_train_iterator(exp: Experiment) -> Any:
    from t5x_like.data import pipeline

    cfg = exp.cfg
    return pipeline.make_train_iterator(
        exp.splits[cfg.data.train_split],
        exp.vocab,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.train.batch_size // jax.process_count(),
        seed=cfg.seed,
        pack=cfg.data.pack,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def make_eval_iterator(exp: Experiment) -> Any:
    from t5x_like.data import pipeline

    cfg = exp.cfg
    return pipeline.make_eval_iterator(
        exp.splits[cfg.data.eval_split],
        exp.vocab,
        seq_len=cfg.data.seq_len,
        batch_size=cfg.train.batch_size // jax.process_count(),
        pack=cfg.data.pack,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_batches=cfg.train.eval_batches or None,
    )


def jit_steps(exp: Experiment, shardings: TrainState) -> tuple[Any, Any]:
    """The train step (state donated) and the eval step, jitted with explicit shardings."""
    train_cfg = exp.cfg.train
    train_step = steps.make_train_step(
        exp.model, exp.tx, exp.rules, train_cfg.z_loss, train_cfg.label_smoothing
    )
    eval_step = steps.make_eval_step(exp.model, exp.rules, train_cfg.z_loss)
    batch = exp.batch_sharding
    rep = partitioning.replicated(exp.mesh)
    jit_train = jax.jit(
        train_step,
        in_shardings=(shardings, batch),
        out_shardings=(shardings, rep),
        donate_argnums=0,
    )
    jit_eval = jax.jit(eval_step, in_shardings=(shardings.params, batch), out_shardings=rep)
    return jit_train, jit_eval


def evaluate(exp: Experiment, eval_step: Any, params: Any) -> dict[str, float]:
    """Loss, perplexity and token accuracy of `params` on the eval split."""
    totals: dict[str, float] = {}
    for local_batch in make_eval_iterator(exp):
        sums = eval_step(params, partitioning.global_batch(local_batch, exp.batch_sharding))
        for k, v in jax.device_get(sums).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return losses.summarize(totals) if totals else {}


class _Throughput:
    """Tokens/s and MFU over the interval since the last report."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak: float):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0

    def report(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        tokens_per_sec = self.steps * self.tokens_per_step / seconds
        return {
            "steps_per_sec": self.steps / seconds,
            "tokens_per_sec": tokens_per_sec,
            "mfu": tokens_per_sec * self.flops_per_token / self.peak,
        }


def _sum_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
    fetched = jax.device_get(history)
    sums = {k: float(sum(m[k] for m in fetched)) for k in fetched[0] if k != "grad_norm"}
    out = losses.summarize(sums)
    out["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
    return out


def train(cfg: config_dict.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the experiment in `workdir`; returns the final train/eval metrics."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    enable_compilation_cache(cfg.train.compilation_cache_dir)
    exp = build_experiment(cfg)
    logging.info(
        "Mesh %s over %d devices (%d processes).",
        dict(exp.mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )
    logging.info("Resolved config:\n%s", config_lib.to_json(cfg))
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        config_lib.save_config(cfg, workdir)

    abstract_state, shardings = state_shardings(exp)
    train_cfg = cfg.train
    checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=train_cfg.max_to_keep,
        async_save=train_cfg.async_checkpoint,
    )
    train_iter = make_train_iterator(exp)
    latest = checkpointer.latest_step()
    if latest is not None:
        logging.info("Resuming from %s/%d.", checkpointer.directory, latest)
        state = checkpointer.restore(latest, abstract_state, train_iter)
    else:
        state = init_state(exp, shardings)
    start_step = int(jax.device_get(state.step))
    n_params = flops.param_count(state.params)
    flops_per_token = flops.train_flops_per_token(state.params, exp.model_config, cfg.data.seq_len)
    peak, peak_source = flops.peak_flops(cfg.model.dtype)
    logging.info(
        "Model: %s parameters, %.3g train FLOPs/token; peak %.3g FLOP/s (%s).",
        f"{n_params:,}",
        flops_per_token,
        peak,
        peak_source,
    )

    jit_train, jit_eval = jit_steps(exp, shardings)
    writer = MetricsWriter(workdir)
    throughput = _Throughput(train_cfg.batch_size * cfg.data.seq_len, flops_per_token, peak)
    history: list[dict[str, jax.Array]] = []
    train_metrics: dict[str, Any] = {}
    eval_metrics: dict[str, Any] = {}
    run_start = time.perf_counter()
    with partitioning.activate(exp.mesh, exp.rules):
        for step in range(start_step, train_cfg.steps):
            batch = partitioning.global_batch(next(train_iter), exp.batch_sharding)
            state, metrics = jit_train(state, batch)
            history.append(metrics)
            throughput.steps += 1
            done = step + 1
            if step == start_step:
                jax.block_until_ready(metrics)
                logging.info(
                    "First step (compile + run) took %.1fs.", time.perf_counter() - run_start
                )
                throughput.reset()
                history = []
                train_metrics = _sum_metrics([jax.device_get(metrics)])
            if done % train_cfg.log_every == 0 or done == train_cfg.steps:
                if history:
                    train_metrics = _sum_metrics(history)
                    train_metrics.update(throughput.report())
                train_metrics["learning_rate"] = float(exp.schedule(step))
                train_metrics["compiles"] = compile_count()
                eta = (train_cfg.steps - done) / max(train_metrics.get("steps_per_sec", 0), 1e-9)
                logging.info(
                    "step %d/%d loss %.4f acc %.3f ppl %.2f grad_norm %.3f lr %.2e "
                    "%.0f tokens/s MFU %.1f%% ETA %.0fs",
                    done,
                    train_cfg.steps,
                    train_metrics["loss"],
                    train_metrics["accuracy"],
                    train_metrics["perplexity"],
                    train_metrics["grad_norm"],
                    train_metrics["learning_rate"],
                    train_metrics.get("tokens_per_sec", 0.0),
                    100 * train_metrics.get("mfu", 0.0),
                    eta if history else float("nan"),
                )
                writer.write(done, "train", train_metrics)
                history = []
                throughput.reset()
            if train_cfg.eval_every and (
                done % train_cfg.eval_every == 0 or done == train_cfg.steps
            ):
                eval_metrics = evaluate(exp, jit_eval, state.params)
                logging.info(
                    "step %d eval: loss %.4f acc %.3f ppl %.2f",
                    done,
                    eval_metrics["loss"],
                    eval_metrics["accuracy"],
                    eval_metrics["perplexity"],
                )
                writer.write(done, "eval", eval_metrics)
                throughput.reset()
            if done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps:
                checkpointer.save(done, state, train_iter)
    checkpointer.close()
    writer.close()
    logging.info(
        "Finished %d steps in %.1fs; workdir %s.",
        train_cfg.steps,
        time.perf_counter() - run_start,
        workdir,
    )
    return {"train": train_metrics, "eval": eval_metrics, "start_step": start_step}
