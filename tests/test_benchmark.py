"""The benchmark's arithmetic (FLOP formula, tokens/s, MFU, memory verdict) and its CLI modes.

Speed itself is not tested (it depends on the machine); what is tested is that the numbers the
benchmark reports are computed right and that its train and dry-run modes run end to end.
"""

import gzip
import json
import math
import os
import subprocess
import sys

import jax
import pytest
import testutil
from testutil import REPO

from t5x_like.experiment import assembly as experiment
from t5x_like.models import decoder_only, encoder_decoder
from t5x_like.models.base import matmul_params
from t5x_like.tools.benchmarking import harness, profile, report
from t5x_like.training import flops

TIMEOUT_S = 180
GIB = 1024**3


def _abstract_params(cfg):
    exp = harness.setup(cfg, devices=jax.devices()[:1])
    abstract, _ = experiment.state_shardings(exp)  # Shapes only: nothing is allocated.
    return exp, abstract.params


# --- The FLOP formula, by hand --------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False])
def test_decoder_only_flops_per_token_by_hand(tied):
    # tiny_config: vocab 128, d_model 32, 2 layers, 4 heads of 8, 2 KV heads, SwiGLU MLP 64.
    overrides = {} if tied else {"model.tie_embeddings": False, "model.position": "learned"}
    exp, params = _abstract_params(testutil.tiny_config(**overrides))
    V, d, L, H, KV, hd, F, T = 128, 32, 2, 4, 2, 8, 64, 16
    per_layer = (
        d * H * hd  # query
        + 2 * d * KV * hd  # key, value (GQA: 2 KV heads)
        + H * hd * d  # out
        + 3 * d * F  # SwiGLU: wi_0, wi_1, wo
        + 2 * d  # pre-attention and pre-MLP RMSNorm scales
    )
    # Tied: the embedding is the LM head's matmul. Untied: the embedding and the learned
    # position table are lookups; the separate LM head [d, V] is the matmul.
    n = L * per_layer + d + V * d  # + final norm + LM head
    assert matmul_params(params, exp.model_config) == n
    attention = 12 * L * T * H * hd  # QK^T and AV, forward + backward, full square.
    assert decoder_only.train_flops_per_token(params, exp.model_config, T) == 6 * n + attention
    assert harness.model_flops_per_token(exp, params) == 6 * n + attention


def test_encoder_decoder_flops_per_token_by_hand():
    # tiny_t5_config: vocab 128, d_model 32, 2+2 layers, 4 heads of 8, GeGLU MLP 64, untied
    # head, relative position biases; 16 encoder and 8 decoder tokens.
    exp, params = _abstract_params(testutil.tiny_t5_config())
    V, d, L, H, hd, F, Te, Td = 128, 32, 2, 4, 8, 64, 16, 8
    attn = 4 * d * H * hd  # query, key, value, out
    mlp = 3 * d * F  # wi_0, wi_1, wo
    n_enc = L * (attn + mlp + 2 * d) + d  # 2 norms per layer + final norm; rel. bias: lookup
    n_xkv = L * 2 * d * H * hd  # cross-attention key/value: they read the Te encoder outputs
    n_dec = L * (attn + 2 * d * H * hd + mlp + 3 * d) + d + d * V  # + cross q/out, LM head
    per_example = 6 * (n_enc * Te + n_dec * Td + n_xkv * Te) + 12 * H * hd * (
        L * Te * Te + L * Td * (Td + Te)
    )
    got = encoder_decoder.train_flops_per_token(params, exp.model_config, Te, Td)
    assert got == pytest.approx(per_example / (Te + Td), rel=1e-12)
    assert harness.model_flops_per_token(exp, params) == got


def _flops_ratio(cfg) -> float:
    """XLA's FLOPs of the compiled train step over the formula's, on one device."""
    exp = harness.setup(cfg, devices=jax.devices()[:1])
    compiled = harness.compile_train_step(exp)
    formula = harness.model_flops_per_token(exp, compiled.abstract_state.params)
    return harness.compiled_flops(compiled.compiled) / (formula * harness.tokens_per_step(exp))


# The formula counts matmuls only; XLA also counts norms, softmax, activations, the loss and the
# AdamW update (a few flops per parameter). At d_model 128 those are ~3% of the total, so XLA's
# count must lie in [1.00, 1.06] x the formula. Counting the cross-attention key/value
# projections per decoder token instead of per encoder token (an earlier version of the
# formula) puts the encoder-decoder ratio at ~1.08, outside the band.
SIZED = {
    "model.d_model": 128,
    "model.mlp_dim": 512,
    "model.vocab_size": 512,
    "train.batch_size": 8,
}


def test_formula_matches_xla_cost_analysis_decoder_only():
    ratio = _flops_ratio(testutil.tiny_config(**SIZED, **{"data.seq_len": 32}))
    assert 1.0 <= ratio <= 1.06, ratio


def test_formula_matches_xla_cost_analysis_encoder_decoder():
    cfg = testutil.tiny_t5_config(
        **SIZED, **{"model.head_dim": 32, "data.inputs_len": 32, "data.targets_len": 16}
    )
    ratio = _flops_ratio(cfg)
    assert 1.0 <= ratio <= 1.06, ratio


# --- Pure arithmetic -------------------------------------------------------------------------


def test_step_time_statistics():
    stats = report.step_time_stats([3.0, 1.0, 2.0, 4.0, 10.0])
    assert stats["median_s"] == 3.0
    assert stats["min_s"] == 1.0
    assert stats["p90_s"] == pytest.approx(4.0 + 0.6 * (10.0 - 4.0))  # Linear interpolation.
    assert stats["mean_s"] == 4.0
    with pytest.raises(ValueError, match="--steps"):
        report.step_time_stats([])


def test_tokens_per_second_and_mfu():
    # 8 x 512 tokens in 0.5 s = 8192 tokens/s; at 1e9 FLOPs/token that is 8.192e12 FLOP/s,
    # 81.92% of a 1e13 FLOP/s peak.
    rates = report.throughput(0.5, 8 * 512, 1e9, 1e13)
    assert rates["tokens_per_sec"] == 8192.0
    assert rates["model_flops_per_sec"] == pytest.approx(8.192e12)
    assert rates["mfu"] == pytest.approx(0.8192)
    assert math.isnan(report.throughput(1.0, 10, 1.0, math.nan)["mfu"])
    with pytest.raises(ValueError):
        report.throughput(0.0, 10, 1.0, 1.0)


def test_memory_estimate_and_verdict():
    analysis = {
        "argument_bytes": 10 * GIB,
        "output_bytes": 10 * GIB,
        "alias_bytes": 9 * GIB,  # The donated state is written in place.
        "temp_bytes": 4 * GIB,
        "generated_code_bytes": 0,
    }
    assert report.memory_estimate(analysis) == 15 * GIB
    assert report.fits(15 * GIB, 16.0) == "FITS"
    assert report.fits(15 * GIB, 15.0) == "FITS"
    assert report.fits(15 * GIB + 1, 15.0) == "DOES NOT FIT"


def test_datasheet_peaks_are_dense_and_dtype_aware():
    assert flops.datasheet_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 989e12
    assert flops.datasheet_peak("NVIDIA H100 80GB HBM3", "float32")[0] == 495e12  # TF32
    assert flops.datasheet_peak("NVIDIA H100 PCIe", "bfloat16")[0] == 756e12
    assert flops.datasheet_peak("NVIDIA H200", "bfloat16")[0] == 989e12
    assert flops.datasheet_peak("TPU v5 lite", "float32")[0] == 197e12  # bf16 passes
    assert flops.datasheet_peak("Some future chip", "bfloat16") is None


def test_profile_breakdown_joins_trace_times_with_hlo_metadata():
    hlo = "\n".join(
        [
            "  %ynn_fusion.1 = f32[8,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%c, "
            'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}, metadata={op_name='
            '"jit(train_step)/jvp(DecoderOnlyTransformer)/decoder/layers_0/mlp/wi_0/dot_general"}',
            "  %exp_fusion = (f32[8]{0}, s32[8]{0}) fusion(%d), kind=kLoop, calls=%e, "
            'metadata={op_name="jit(train_step)/transpose(jvp(DecoderOnlyTransformer))/decoder/'
            'layers_0/self_attention/vmap()/reduce_sum"}',
            '  ROOT %add.3 = f32[8]{0} add(%f, %g), metadata={op_name="jit(train_step)/add"}',
        ]
    )
    meta = profile.hlo_metadata(hlo)
    assert meta["ynn_fusion.1"]["matmul"] and meta["ynn_fusion.1"]["shape"] == "f32[8,16]{1,0}"
    assert not meta["exp_fusion"]["matmul"] and not meta["add.3"]["matmul"]
    # 2 steps; an event that is no HLO instruction (a runtime annotation) is left out.
    times = {"ynn_fusion.1": 600.0, "exp_fusion": 300.0, "add.3": 100.0, "Runtime": 5000.0}
    b = profile.op_breakdown(times, meta, steps=2)
    assert b["op_time_ms_per_step"] == pytest.approx(0.5)
    assert b["by_kind"] == pytest.approx(
        {"matmul": 0.6, "non-matmul (fusions, copies, reductions)": 0.4}
    )
    assert b["by_part"] == pytest.approx(
        {
            "forward: MLP": 0.6,
            "backward: attention core": 0.3,
            "update: optimizer / other": 0.1,
        }
    )
    assert [op["op"] for op in b["top_ops"]] == ["ynn_fusion.1", "exp_fusion", "add.3"]


def test_step_profile_credits_untraced_gaps_to_the_async_dot_before_them(tmp_path):
    hlo = "\n".join(
        [
            "  %ynn_fusion.1 = f32[8,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%c, "
            'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}, metadata={op_name='
            '"jit(train_step)/jvp(DecoderOnlyTransformer)/decoder/layers_0/mlp/wi_0/dot_general"}',
            "  %dot.2 = f32[16,16]{1,0} dot(%x, %y), lhs_contracting_dims={0}, "
            'rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/transpose(jvp('
            'DecoderOnlyTransformer))/decoder/layers_0/mlp/wi_0/transpose"}',
            "  %exp_fusion = f32[8]{0} fusion(%d), kind=kLoop, calls=%e, metadata={op_name="
            '"jit(train_step)/add"}',
            "  %while.4 = (s32[], f32[8]{0}) while(%t), condition=%c, body=%b, metadata={op_name="
            '"jit(train_step)/jvp()/while"}',
        ]
    )
    meta = profile.hlo_metadata(hlo)
    assert meta["dot.2"]["opcode"] == "dot" and meta["dot.2"]["matmul"]
    # One step: the dot's event is its dispatch; its work runs in the 30 us gap after it. The
    # 5 us gap after exp_fusion follows no dot (the runtime's own). Python-thread events and
    # events that are no HLO op are left out.
    events = [
        ("ynn_fusion.1", 0.0, 10.0, 1),
        ("dot.2", 10.0, 0.5, 1),
        ("Runtime", 12.0, 100.0, 1),
        ("exp_fusion", 40.5, 4.5, 2),
        ("ynn_fusion.1", 20.0, 99.0, 3),
        ("while.4", 50.0, 10.0, 2),  # Spans the op of its body: not counted twice.
        ("ynn_fusion.1", 50.0, 10.0, 1),
    ]
    trace = {
        "traceEvents": [
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": t, "args": {"name": n}}
            for t, n in ((1, "tf_XLAEigen/1"), (2, "tf_XLAEigen/2"), (3, "python"))
        ]
        + [
            {"ph": "X", "name": n, "ts": ts, "dur": dur, "pid": 1, "tid": tid}
            for n, ts, dur, tid in events
        ]
    }
    path = tmp_path / "vm.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(trace, f)
    b = profile.step_profile(str(path), meta, steps=1)
    assert b["wall_ms_per_step"] == pytest.approx(0.060)
    assert b["async_dot_ms_per_step"] == pytest.approx(0.030)
    assert b["untraced_ms_per_step"] == pytest.approx(0.005)
    # 20 us of ynn_fusion.1, 0.5 + 30 of dot.2, 4.5 of exp_fusion.
    assert b["op_time_ms_per_step"] == pytest.approx(0.055)
    assert [op["op"] for op in b["top_ops"]] == ["dot.2", "ynn_fusion.1", "exp_fusion"]
    assert b["by_part"]["backward: MLP"] == pytest.approx(30.5 / 55)
    rows = dict(profile.breakdown_rows(b))
    assert rows["wall time per step (ms)"] == pytest.approx(0.060)


# --- The CLI ---------------------------------------------------------------------------------

TINY_FLAGS = [
    "--config=configs/benchmark.py:cpu",
    "--config.model.num_layers=1",
    "--config.model.d_model=32",
    "--config.model.num_heads=4",
    "--config.model.mlp_dim=64",
    "--config.model.vocab_size=256",
    "--config.data.seq_len=16",
    "--config.train.batch_size=16",
]


def _run(args: list[str], xla_flags: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
    proc = subprocess.run(
        [sys.executable, "experiments/benchmark.py", *TINY_FLAGS, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _table_value(stdout: str, name: str) -> str:
    """The value printed in the table's row `name`."""
    for line in stdout.splitlines():
        if line.startswith(name + "  "):
            return line[len(name) :].strip()
    raise AssertionError(f"no row {name!r} in:\n{stdout}")


def test_train_mode_writes_json_with_every_field(tmp_path):
    out = tmp_path / "train.json"
    proc = _run(["--mode=train", "--steps=3", "--warmup=1", "--profile_steps=1", f"--out={out}"])
    r = json.loads(out.read_text())
    prof = r["profile"]  # One traced step, its op time broken down.
    assert os.path.exists(prof["trace"]) and prof["wall_ms_per_step"] > 0
    assert prof["op_time_ms_per_step"] > 0 and sum(prof["by_kind"].values()) == pytest.approx(1)
    for key in (
        "lower_s", "compile_s", "step_time", "tokens_per_sec", "model_flops_per_token",
        "flops_formula", "mfu", "peak_flops", "peak_source", "memory_analysis_per_device",
        "memory_estimate_bytes_per_device", "xla_flops_per_step", "xla_over_formula",
        "params", "tokens_per_step", "final_loss", "device_memory",
    ):  # fmt: skip
        assert key in r, key
    assert r["mode"] == "train" and len(r["step_times_s"]) == 3
    assert r["lower_s"] > 0 and r["compile_s"] > 0
    times = r["step_times_s"]
    assert min(times) == r["step_time"]["min_s"] <= r["step_time"]["median_s"] <= max(times)
    assert r["tokens_per_step"] == 16 * 16
    assert r["tokens_per_sec"] == pytest.approx(r["tokens_per_step"] / r["step_time"]["median_s"])
    assert r["mfu"] == pytest.approx(
        r["tokens_per_sec"] * r["model_flops_per_token"] / r["peak_flops"]
    )
    assert 0 < r["mfu"] < 1
    assert r["mfu_fastest_step"] == pytest.approx(
        r["tokens_per_step"] / r["step_time"]["min_s"] * r["model_flops_per_token"]
        / r["peak_flops"]
    )  # fmt: skip
    assert r["mfu_fastest_step"] >= r["mfu"]
    assert "measured float32" in r["peak_source"]  # CPU: peak measured in the model's dtype.
    assert r["memory_estimate_bytes_per_device"] == report.memory_estimate(
        r["memory_analysis_per_device"]
    )
    assert math.isfinite(r["final_loss"])
    assert r["device_memory"] is None  # CPU devices keep no allocator statistics.
    assert "MFU" in proc.stdout and "tokens/s" in proc.stdout


def test_dryrun_on_a_fake_16_device_mesh_says_whether_it_fits(tmp_path):
    # The inherited XLA_FLAGS ask for 8 devices; --dryrun_devices must win.
    fits = tmp_path / "fits.json"
    proc = _run(
        ["--mode=dryrun", "--dryrun_devices=16", "--device_memory_gib=1", f"--out={fits}"],
        xla_flags="--xla_force_host_platform_device_count=8",
    )
    r = json.loads(fits.read_text())
    assert r["devices"] == 16 and r["mesh"] == {"data": 16, "fsdp": 1, "tensor": 1}
    estimate = r["memory_estimate_bytes_per_device"]
    # Data parallel: every device holds all params and AdamW's two moments, plus temporaries.
    assert estimate > r["params_bytes_per_device"] * 3 > 0
    assert r["verdict"] == "FITS" and _table_value(proc.stdout, "verdict") == "FITS"

    budget = 0.9 * estimate / GIB
    workdir = tmp_path / "results"
    proc = _run(
        ["--mode=dryrun", "--dryrun_devices=16", f"--device_memory_gib={budget}",
         f"--workdir={workdir}"]
    )  # fmt: skip
    # Without --out, the file is named with the mesh and device count (reruns on other meshes
    # keep their own).
    [tight] = workdir.glob("*_dryrun_d16f1t1_16dev.json")
    r = json.loads(tight.read_text())
    assert r["memory_estimate_bytes_per_device"] == estimate  # Same program, same figure.
    assert r["verdict"] == "DOES NOT FIT"
    assert _table_value(proc.stdout, "verdict") == "DOES NOT FIT"
