"""Decoding throughput: `decoding.generate` with the KV cache on random params and prompts.

Every row decodes exactly max_new_tokens (no EOS), so the work is fixed. Each batch size is
compiled twice, for max_new_tokens and for 1 token: the second run is the prefill (the prompt's
forward pass and the first token), so (full - prefill) / (max_new_tokens - 1) is the time of
one cached decoding step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from ml_collections import config_dict

from t5x_like import decoding, partitioning
from t5x_like.experiment import assembly as experiment
from t5x_like.tools.benchmarking import harness, report
from t5x_like.training import flops


def _prompts(exp: Any, batch: int, prompt_len: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, exp.cfg.model.vocab_size, size=(batch, prompt_len), dtype=np.int32)
    return dict(zip(exp.family.prompt_keys, (ids, np.ones_like(ids)), strict=True))


def _time_generate(
    exp: Any,
    params: Any,
    param_shardings: Any,
    prompts: Any,
    sharded: bool,
    config: Any,
    repeats: int,
) -> tuple[float, list[float]]:
    """(compile seconds, `repeats` wall times after one warm-up call) of one generate."""

    def generate(params: Any, prompts: dict[str, jax.Array]) -> jax.Array:
        return decoding.generate(exp.model, params, prompts, config, eos_id=None).tokens

    prompt_sharding = jax.tree.map(lambda x: x.sharding, prompts)
    jitted = jax.jit(generate, in_shardings=(param_shardings, prompt_sharding))
    # Rows sharded over the batch axes: the model's activation constraints apply.
    context = partitioning.activate(exp.mesh, exp.rules) if sharded else contextlib.nullcontext()
    with context:
        start = time.perf_counter()
        compiled = jitted.lower(params, prompts).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(params, prompts))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params, prompts))
            times.append(time.perf_counter() - start)
    return compile_s, times


def benchmark_decode(
    cfg: config_dict.ConfigDict,
    batch_sizes: Sequence[int],
    prompt_len: int,
    decode_config: decoding.DecodeConfig,
    repeats: int = 3,
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Per batch size: compile time, end-to-end generated tokens/s, prefill time, and the time
    and tokens/s of the cached decoding steps alone."""
    if prompt_len < 1 or repeats < 1:
        raise ValueError(f"--prompt_len={prompt_len} and --decode_repeats={repeats} must be >= 1.")
    exp = harness.setup(cfg)
    abstract_state, shardings = experiment.state_shardings(exp)
    params = harness.params_only_init(exp, shardings.params)
    batch_shards = exp.mesh.shape["data"] * exp.mesh.shape["fsdp"]
    new_tokens = decode_config.max_new_tokens
    prefill_config = dataclasses.replace(decode_config, max_new_tokens=1)
    beams = decode_config.num_beams if decode_config.strategy == "beam" else 1
    result: dict[str, Any] = {
        "mode": "decode",
        "config": cfg.name,
        "family": cfg.model.family,
        "dtype": cfg.model.dtype,
        "params": flops.param_count(abstract_state.params),
        "devices": exp.mesh.size,
        "mesh": dict(exp.mesh.shape),
        "strategy": decode_config.strategy,
        "num_beams": beams,
        "prompt_len": prompt_len,
        "max_new_tokens": new_tokens,
        "repeats": repeats,
        "batches": [],
    }
    rows: list[tuple[str, Any]] = [
        ("decode", None),
        ("config", result["config"]),
        ("params", result["params"]),
        ("strategy", f"{decode_config.strategy} (beams {beams})"),
        ("prompt / new tokens", f"{prompt_len} / {new_tokens}"),
        ("mesh", f"{result['mesh']} ({exp.mesh.size} devices)"),
    ]
    for batch in batch_sizes:
        local = _prompts(exp, batch, prompt_len, cfg.seed)
        # Rows shard over the batch axes when they divide evenly; otherwise replicate them.
        sharded = batch % batch_shards == 0
        if sharded:
            prompts = partitioning.global_batch(local, exp.batch_sharding)
        else:
            prompts = jax.device_put(local, partitioning.replicated(exp.mesh))
        args = (exp, params, shardings.params, prompts, sharded)
        compile_s, times = _time_generate(*args, decode_config, repeats)
        _, prefill_times = _time_generate(*args, prefill_config, repeats)
        full = report.step_time_stats(times)["median_s"]
        prefill = report.step_time_stats(prefill_times)["median_s"]
        # Noise can make a 1-token run look slower than a short full run: clamp at 0.
        steps_s = max(full - prefill, 0.0)
        step_ms = 1000 * steps_s / max(new_tokens - 1, 1)
        entry = {
            "batch_size": batch,
            "compile_s": compile_s,
            "times_s": times,
            "prefill_times_s": prefill_times,
            "median_s": full,
            "prefill_median_s": prefill,
            "tokens_per_sec": batch * new_tokens / full,
            "decode_step_ms": step_ms,
            "decode_tokens_per_sec": batch * 1000 / step_ms if step_ms > 0 else float("nan"),
        }
        result["batches"].append(entry)
        rows += [
            (f"batch {batch}", None),
            ("compile (s)", compile_s),
            (f"generate, median of {repeats} (s)", full),
            ("generated tokens/s (prefill included)", entry["tokens_per_sec"]),
            (f"prefill ({prompt_len} tokens + first) (s)", prefill),
            ("decoding step (ms)", step_ms),
            ("decoding tokens/s (prefill excluded)", entry["decode_tokens_per_sec"]),
        ]
    return result, rows
