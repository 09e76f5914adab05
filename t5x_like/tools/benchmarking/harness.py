"""The benchmarked experiment: synthetic batches, the compiled train step, what XLA reports about
it (memory and cost analysis) and the model FLOPs of its family's formula
(`models.ModelFamily.train_flops_per_token`).

Nothing here reads a dataset or a vocabulary: model.vocab_size comes from the config and the
batches are random token ids of the task's row lengths (every row one full document).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from t5x_like import partitioning
from t5x_like.data import pipeline
from t5x_like.experiment import assembly as experiment
from t5x_like.training.train_state import TrainState


def setup(cfg: config_dict.ConfigDict, devices: list[jax.Device] | None = None) -> Any:
    """The experiment of `cfg` (validated) without data or vocabulary."""
    return experiment.assemble_experiment(cfg, devices=devices)


def row_lengths(exp: Any) -> dict[str, int]:
    """Tokens per row on each side: {"decoder": T} or {"encoder": T_enc, "decoder": T_dec}."""
    return exp.family.row_lengths(exp.task)


def tokens_per_step(exp: Any) -> int:
    """Tokens of one global batch (encoder + decoder tokens for encoder-decoder models), as the
    trainer's throughput meter counts them."""
    return exp.cfg.train.batch_size * exp.family.tokens_per_row(exp.task)


def abstract_batch(exp: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes, dtypes and shardings of one global batch (nothing allocated)."""
    return {
        key: jax.ShapeDtypeStruct(shape, dtype, sharding=exp.batch_sharding)
        for key, (shape, dtype) in pipeline.batch_shapes(exp.task, exp.cfg.train.batch_size).items()
    }


def _full_side(
    rng: np.random.Generator, shape: tuple[int, int], vocab: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random tokens, one segment per row, positions 0..T-1."""
    tokens = rng.integers(1, vocab, size=shape, dtype=np.int32)
    positions = np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape)
    return tokens, np.ones(shape, np.int32), np.ascontiguousarray(positions)


def synthetic_batch(exp: Any, seed: int = 0) -> dict[str, jax.Array]:
    """A random global batch in the pipeline's format, sharded like real batches."""
    rng = np.random.default_rng(seed)
    vocab, batch = exp.cfg.model.vocab_size, exp.cfg.train.batch_size
    sides = {side: _full_side(rng, (batch, n), vocab) for side, n in row_lengths(exp).items()}
    local = exp.task.features_from_sides(sides)
    return partitioning.global_batch(local, exp.batch_sharding)


def model_flops_per_token(exp: Any, params: Any) -> float:
    """Training FLOPs per token by the formula (works on abstract params)."""
    return exp.family.train_flops_per_token(params, exp.model_config, exp.task)


def representative_matmul(exp: Any) -> tuple[int, int, int]:
    """(m, k, n) of the model's MLP input matmul on one device's share of a batch (m capped at
    4096 rows so the CPU peak measurement stays short)."""
    cfg, mesh = exp.cfg, exp.mesh.shape
    rows = tokens_per_step(exp) // max(mesh["data"] * mesh["fsdp"], 1)
    return (min(rows, 4096), cfg.model.d_model, cfg.model.mlp_dim)


def params_only_init(exp: Any, param_shardings: Any) -> Any:
    """Random params placed directly into their shardings (no optimizer state): for decoding."""

    def init(rng: jax.Array) -> Any:
        with nn.logical_axis_rules(exp.rules):
            return nn.unbox(exp.family.init_params(exp.model, rng, 1))

    return jax.jit(init, out_shardings=param_shardings)(jax.random.PRNGKey(exp.cfg.seed))


@dataclasses.dataclass
class CompiledStep:
    """The train step compiled ahead of time, with its timings and XLA's reports."""

    compiled: Any
    abstract_state: TrainState
    shardings: TrainState
    lower_s: float
    compile_s: float


def compile_train_step(exp: Any) -> CompiledStep:
    """Lowers and compiles `experiment.jit_steps`' train step from abstract shapes only (params
    are never allocated), timing the two phases separately."""
    abstract_state, shardings = experiment.state_shardings(exp)
    jit_train, _ = experiment.jit_steps(exp, shardings)
    with partitioning.activate(exp.mesh, exp.rules):
        start = time.perf_counter()
        lowered = jit_train.lower(abstract_state, abstract_batch(exp))
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
    return CompiledStep(compiled, abstract_state, shardings, lower_s, compile_s)


def memory_analysis(compiled: Any) -> dict[str, int] | None:
    """Per-device byte counts of a compiled program (None where the backend reports none)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "generated_code_bytes": int(stats.generated_code_size_in_bytes),
    }


def compiled_flops(compiled: Any) -> float:
    """FLOPs of one device's program by XLA's cost analysis (nan where unavailable)."""
    costs = compiled.cost_analysis()
    if isinstance(costs, (list, tuple)):  # Older JAX: one dict per device program.
        costs = costs[0] if costs else None
    if not costs or "flops" not in costs:
        return math.nan
    return float(costs["flops"])


def bytes_per_device(abstract: Any, shardings: Any) -> int:
    """Bytes of one device's shard of a tree (the largest shard when uneven)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
        shard = sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


def device_memory_stats() -> dict[str, int] | None:
    """Peak and limit bytes of the busiest local device, where the backend keeps them (GPU,
    TPU; None on CPU)."""
    peaks, limits = [], []
    for device in jax.local_devices():
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        peaks.append(int(stats["peak_bytes_in_use"]))
        limits.append(int(stats.get("bytes_limit", 0)))
    return {"peak_bytes_in_use": max(peaks), "bytes_limit": min(limits)} if peaks else None
