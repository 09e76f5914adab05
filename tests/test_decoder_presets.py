"""configs/decoder_only.py:SIZE: every size builds, with the published parameter counts of the
models they are named after, configs/benchmark.py reads the same table, and an unknown size is
a one-line error listing the choices (issue 21)."""

import json
import math
import subprocess
import sys

import jax
import pytest
from testutil import REPO, load_config

from t5x_like.experiment import assembly as experiment

SIZES = ("tiny", "small", "medium", "1b", "3b", "8b")


def _param_count(cfg) -> int:
    """Parameters of the config's model, from shapes alone (nothing allocated)."""
    abstract, _ = experiment.state_shardings(experiment.assemble_experiment(cfg))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))


@pytest.mark.parametrize(
    "size, vocab, expected",
    [
        # Hugging Face's counts of the models the sizes are named after (num_parameters()):
        ("1b", 32000, 1_100_048_384),  # TinyLlama/TinyLlama-1.1B
        ("3b", 128256, 3_212_749_824),  # meta-llama/Llama-3.2-3B (tied embeddings)
        ("8b", 128256, 8_030_261_248),  # meta-llama/Meta-Llama-3-8B
    ],
)
def test_large_sizes_have_the_published_shapes(size, vocab, expected):
    cfg = load_config("decoder_only", size)
    cfg.model.vocab_size = vocab
    assert _param_count(cfg) == expected


def test_every_size_builds_on_this_mesh():
    """Each size assembles (validation, mesh, sharded abstract state) on the 8 test devices."""
    counts = {}
    for size in SIZES:
        cfg = load_config("decoder_only", size)
        cfg.model.vocab_size = 2048  # The default corpus vocabulary's.
        counts[size] = _param_count(cfg)
    assert counts["tiny"] == _param_count(_with_vocab(load_config("decoder_only"), 2048))
    assert list(counts.values()) == sorted(counts.values())  # Each size larger than the last.
    # small: GPT-2 small's body (12 x 768) with a SwiGLU MLP: 12 * (4 * 768^2 + 3 * 768 * 2048
    # + 2 * 768) + 768, plus the tied 2048 x 768 embedding.
    assert counts["small"] == 12 * (4 * 768**2 + 3 * 768 * 2048 + 2 * 768) + 768 + 2048 * 768


def test_benchmark_sizes_come_from_the_same_table():
    for bench, size in (("125m", "small"), ("1b", "1b"), ("8b", "8b")):
        bench_model, model = (
            load_config("benchmark", bench).model,
            load_config("decoder_only", size).model,
        )
        for field in ("d_model", "num_layers", "num_heads", "num_kv_heads", "mlp_dim"):
            assert bench_model[field] == model[field], (bench, field)
        assert bench_model.rope_theta == model.rope_theta


def test_small_runs_and_an_unknown_size_is_one_line_listing_the_choices():
    config = f"--config={REPO}/configs/decoder_only.py"
    train = [sys.executable, str(REPO / "experiments" / "train.py")]
    procs = [
        subprocess.Popen(
            [*train, f"{config}:{arg}", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for arg, extra in (("small", ["--print_config"]), ("70b", []))
    ]
    (small_out, small_err), (_, bad_err) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 0, small_err[-2000:]
    printed = json.loads(small_out)
    assert printed["model"]["d_model"] == 768 and printed["name"] == "decoder_only_small"
    assert procs[1].returncode == 1
    assert bad_err.strip().splitlines() == [
        f"ERROR (ConfigError): {config}:70b: unknown decoder-only size '70b'; choose one of "
        "tiny, small, medium, 1b, 3b, 8b"
    ], bad_err[-2000:]


def _with_vocab(cfg, vocab):
    cfg.model.vocab_size = vocab
    return cfg
