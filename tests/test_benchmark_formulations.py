"""experiments/benchmark.py --mode=formulations: the train step timed with every XLA:CPU
formulation on, each off in turn and all off, as a table and JSON (no timing assertions: the
figures depend on the machine)."""

import json
import math
import os
import subprocess
import sys

import pytest
from testutil import REPO, tiny_config

from t5x_like.tools.benchmarking import formulations

TINY_FLAGS = [
    "--config=configs/benchmark.py:cpu",  # loss_chunk_size=64: every formulation is in play.
    "--config.model.num_layers=1",
    "--config.model.d_model=32",
    "--config.model.num_heads=4",
    "--config.model.mlp_dim=64",
    "--config.model.vocab_size=256",
    "--config.data.seq_len=16",
    "--config.train.batch_size=16",
]
VARIANTS = [
    "all on",
    "loss_chunks off",
    "matmul_2d off",
    "heads_major off",
    "causal_split off",
    "weight_grad_copy off",
    "all off",
]


def test_variants_follow_the_config():
    chunked = formulations.variants(_config_with_chunks(64))
    assert [v.name for v in chunked] == VARIANTS
    assert chunked[-1].config(_config_with_chunks(64)).train.loss_chunk_size == 0
    assert not any(vars(chunked[-1].formulations())[n] for n in formulations.TRAIN_STEP_SWITCHES)
    assert chunked[-1].formulations().argmax_reductions  # Decoding's, not the train step's.
    plain = formulations.variants(_config_with_chunks(0))  # No loss chunks: no copy inside them.
    assert [v.name for v in plain] == [
        n for n in VARIANTS if n not in ("loss_chunks off", "weight_grad_copy off")
    ]


def _config_with_chunks(chunk):
    return tiny_config(**{"train.loss_chunk_size": chunk})


def test_formulations_mode_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "formulations.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [
            sys.executable,
            "experiments/benchmark.py",
            *TINY_FLAGS,
            "--mode=formulations",
            "--steps=2",
            "--warmup=0",
            f"--out={out}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "formulations" and r["steps"] == 2 and r["tokens_per_step"] == 16 * 16
    assert [v["name"] for v in r["variants"]] == VARIANTS
    on, off = r["variants"][0], r["variants"][-1]
    assert on["switched_off"] == [] and on["cost_vs_all_on"] == 0.0 and on["loss_chunk_size"] == 64
    assert off["loss_chunk_size"] == 0 and "loss_chunks" in off["switched_off"]
    for v in r["variants"]:
        assert len(v["step_times_s"]) == 2 and v["step_time"]["median_s"] > 0
        assert v["cost_vs_all_on"] == pytest.approx(
            v["step_time"]["median_s"] / on["step_time"]["median_s"] - 1
        )
        # The same two steps from the same state: the formulations compute the same loss.
        assert math.isfinite(v["final_loss"])
        assert v["final_loss"] == pytest.approx(on["final_loss"], rel=1e-5), v["name"]
    lines = proc.stdout.splitlines()
    for name in VARIANTS:
        assert any(line.startswith(name + "  ") for line in lines), (name, proc.stdout)
