"""The train and dry-run modes (decode: decode.py), each returning a JSON-able dict and the
rows of its printed table.

train   compile the train step (lower and compile timed apart), run `warmup` then `steps`
        timed steps on a synthetic batch: step-time statistics, tokens/s, MFU, memory
dryrun  compile the train step for this process's devices (fake CPU devices for a mesh
        larger than the machine) and compare the per-device memory to a budget
"""

from __future__ import annotations

import time
from typing import Any

import jax
from ml_collections import config_dict

from t5x_like.experiment import assembly as experiment
from t5x_like.models.base import matmul_params
from t5x_like.tools.benchmarking import harness, profile, report
from t5x_like.training import flops

FLOP_FORMULA = (
    "decoder-only: 6*N + 12*L*T*d_attn per token; encoder-decoder: "
    "[6*(N_enc*T_enc + N_dec*T_dec + N_xkv*T_enc) + 12*d_attn*(L_enc*T_enc^2 + "
    "L_dec*T_dec*(T_dec+T_enc))] / (T_enc+T_dec); N = matmul params (t5x_like/training/flops.py)"
)


def _describe(exp: Any, compiled: harness.CompiledStep) -> dict[str, Any]:
    """What every mode reports about the model, the mesh and the compiled train step."""
    cfg = exp.cfg
    params = compiled.abstract_state.params
    per_token = harness.model_flops_per_token(exp, params)
    tokens = harness.tokens_per_step(exp)
    n_devices = exp.mesh.size
    xla_flops = harness.compiled_flops(compiled.compiled) * n_devices
    memory = harness.memory_analysis(compiled.compiled)
    state = {
        "params_bytes_per_device": harness.bytes_per_device(params, compiled.shardings.params),
        "opt_state_bytes_per_device": harness.bytes_per_device(
            compiled.abstract_state.opt_state, compiled.shardings.opt_state
        ),
    }
    return {
        "config": cfg.name,
        "family": cfg.model.family,
        "dtype": cfg.model.dtype,
        "param_dtype": cfg.model.param_dtype,
        "remat": cfg.model.remat,
        "scan_layers": cfg.model.scan_layers,
        "params": flops.param_count(params),
        "matmul_params": matmul_params(params, exp.model_config),
        "row_lengths": harness.row_lengths(exp),
        "batch_size": cfg.train.batch_size,
        "tokens_per_step": tokens,
        "devices": n_devices,
        "device_kind": exp.mesh.devices.flat[0].device_kind,
        "mesh": dict(exp.mesh.shape),
        "lower_s": compiled.lower_s,
        "compile_s": compiled.compile_s,
        "flops_formula": FLOP_FORMULA,
        "model_flops_per_token": per_token,
        "model_flops_per_step": per_token * tokens,
        # Per-device program FLOPs x devices: counts remat recomputation, norms, softmax, the
        # optimizer (once per replica) -- everything the formula leaves out.
        "xla_flops_per_step": xla_flops,
        "xla_over_formula": xla_flops / (per_token * tokens),
        "xla_flops_note": _xla_flops_note(cfg),
        "memory_analysis_per_device": memory,
        "memory_estimate_bytes_per_device": report.memory_estimate(memory) if memory else None,
        **state,
    }


def _xla_flops_note(cfg: Any) -> str:
    """Why XLA's count may differ from the formula by more than norms and softmax."""
    model_cfg, notes = cfg.model, []
    if cfg.train.microbatches > 1:
        notes.append("microbatches: XLA counts the accumulation loop body once")
    if model_cfg.scan_layers:
        notes.append("scan_layers: XLA counts the scanned layer body once, not once per layer")
    if model_cfg.remat != "none":
        notes.append(f"remat={model_cfg.remat}: XLA counts the recomputed forward too")
    return "; ".join(notes)


def _model_rows(r: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [
        ("model", None),
        ("config", r["config"]),
        ("family / dtype / remat", f"{r['family']} / {r['dtype']} / {r['remat']}"),
        ("params", r["params"]),
        ("matmul params (N)", r["matmul_params"]),
        ("row lengths", r["row_lengths"]),
        ("batch size / tokens per step", f"{r['batch_size']} / {r['tokens_per_step']:,}"),
        ("mesh", f"{r['mesh']} ({r['devices']} x {r['device_kind']})"),
        ("compilation", None),
        ("lower (s)", r["lower_s"]),
        ("compile (s)", r["compile_s"]),
        ("FLOPs", None),
        ("model FLOPs/token (formula)", r["model_flops_per_token"]),
        ("model FLOPs/step (formula)", r["model_flops_per_step"]),
        ("XLA cost_analysis FLOPs/step", r["xla_flops_per_step"]),
        ("XLA / formula", r["xla_over_formula"]),
    ]
    if r["xla_flops_note"]:
        rows.append(("XLA FLOPs note", r["xla_flops_note"]))
    rows += [
        ("memory per device", None),
        ("params", report.gib(r["params_bytes_per_device"])),
        ("optimizer state", report.gib(r["opt_state_bytes_per_device"])),
    ]
    memory = r["memory_analysis_per_device"]
    if memory:
        rows += [(f"compiled {k[:-6]}", report.gib(v)) for k, v in memory.items()]
        rows.append(
            (
                "compiled estimate (arg+out-alias+temp+code)",
                report.gib(r["memory_estimate_bytes_per_device"]),
            )
        )
    return rows


def benchmark_train(
    cfg: config_dict.ConfigDict,
    steps: int,
    warmup: int,
    profile_steps: int = 0,
    profile_dir: str = "",
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Compiles the train step, then times `steps` steps after `warmup` untimed ones; with
    `profile_steps`, traces that many more into `profile_dir` and breaks their op time down."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"--steps={steps} must be >= 1 and --warmup={warmup} >= 0.")
    exp = harness.setup(cfg)
    compiled = harness.compile_train_step(exp)
    result = _describe(exp, compiled)
    state = experiment.init_state(exp, compiled.shardings)
    batch = harness.synthetic_batch(exp, seed=cfg.seed)
    # The peak is measured before and after the timed steps (afresh, not the trainer's cached
    # figure: like for like with these steps) and the higher one kept: a peak measured while
    # something else ran would make the MFU look better than it is.
    matmul = harness.representative_matmul(exp)
    peak_before, _ = flops.peak_flops(
        cfg.model.dtype, matmul, given=cfg.train.get("peak_flops"), use_cache=False
    )
    times, metrics = [], None
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = compiled.compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if profile_steps:
        holder = {"state": state}

        def run_step() -> Any:
            holder["state"], out = compiled.compiled(holder["state"], batch)
            return holder["state"], out

        trace = profile.trace_steps(run_step, profile_steps, profile_dir)
        metadata = profile.hlo_metadata(compiled.compiled.as_text())
        breakdown = profile.step_profile(trace, metadata, profile_steps)
        breakdown["trace"] = trace
        state = holder["state"]
    metrics = jax.device_get(metrics)
    loss = float("nan")  # A sanity check that the step computes something finite.
    if "loss_sum" in metrics and "weight_sum" in metrics:
        loss = float(metrics["loss_sum"]) / max(float(metrics["weight_sum"]), 1.0)
    stats = report.step_time_stats(times)
    peak, peak_source = flops.peak_flops(
        cfg.model.dtype, matmul, given=cfg.train.get("peak_flops"), use_cache=False
    )
    peak = max(peak, peak_before)  # Equal on accelerators (a datasheet figure).
    rates = report.throughput(
        stats["median_s"], result["tokens_per_step"], result["model_flops_per_token"], peak
    )
    # The CPU peak is the best of many matmuls; on a shared machine the like-for-like figure
    # is the fastest step against it (the median is slowed by what else runs).
    fastest = report.throughput(
        stats["min_s"], result["tokens_per_step"], result["model_flops_per_token"], peak
    )
    result.update(
        mfu_fastest_step=fastest["mfu"],
        mode="train",
        steps=steps,
        warmup=warmup,
        step_times_s=times,
        step_time=stats,
        **rates,
        peak_flops=peak,
        peak_source=peak_source,
        final_loss=loss,
        device_memory=harness.device_memory_stats(),
    )
    rows = _model_rows(result) + [
        ("speed", None),
        (
            f"step time median / min / p90 (s) over {steps}",
            "{:.4g} / {:.4g} / {:.4g}".format(stats["median_s"], stats["min_s"], stats["p90_s"]),
        ),
        ("tokens/s", rates["tokens_per_sec"]),
        ("model FLOP/s", rates["model_flops_per_sec"]),
        ("peak FLOP/s", f"{peak:.4g} ({peak_source})"),
        ("MFU", f"{100 * rates['mfu']:.2f}%"),
        ("MFU of the fastest step", f"{100 * fastest['mfu']:.2f}%"),
        ("final loss (random data)", loss),
    ]
    if result["device_memory"]:
        dm = result["device_memory"]
        rows.append(
            (
                "device peak memory in use",
                f"{report.gib(dm['peak_bytes_in_use'])} of {report.gib(dm['bytes_limit'])}",
            )
        )
    if profile_steps:
        result["profile"] = breakdown
        rows += profile.breakdown_rows(breakdown)
    return result, rows


def benchmark_dryrun(
    cfg: config_dict.ConfigDict, budget_gib: float
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Compiles the train step for this process's devices; nothing is allocated or run."""
    exp = harness.setup(cfg)
    compiled = harness.compile_train_step(exp)
    result = _describe(exp, compiled)
    estimate = result["memory_estimate_bytes_per_device"]
    verdict = report.fits(estimate, budget_gib) if estimate is not None else "UNKNOWN"
    result.update(mode="dryrun", device_memory_gib=budget_gib, verdict=verdict)
    rows = _model_rows(result) + [
        ("budget per device", f"{budget_gib:g} GiB"),
        ("verdict", verdict),
    ]
    return result, rows
