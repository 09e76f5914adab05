"""End to end on the embedded corpus: outputs, no recompilation, resume, kill-and-resume, CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import matplotlib.image
import pytest
from testutil import corpus_config, tiny_train_args

from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training import compilation
from t5x_like.training.metrics_writer import read_metrics


def test_train_writes_outputs_and_never_recompiles(corpus_dir, tmp_path):
    """Outputs land in the workdir; after the first step, eval and save, nothing compiles.

    `compiles` is logged after each step's log line, before that step's eval and save, so a
    recompilation in eval or save at step k shows up in the record of step k + 1.
    """
    workdir = str(tmp_path / "run")
    settings = {"train.eval_every": 3, "train.checkpoint_every": 2, "train.eval_batches": 2}
    result = trainer.train(corpus_config(corpus_dir, **settings, **{"train.steps": 6}), workdir)
    assert result["start_step"] == 0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["vocab_size"] == 256  # Resolved from the vocabulary.
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(f"{workdir}/tensorboard"))
    train = read_metrics(workdir, "train")
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    assert {"loss", "accuracy", "perplexity", "grad_norm", "learning_rate"} <= set(train[6])
    assert train[6]["tokens_per_sec"] > 0 and train[6]["mfu"] > 0
    evals = read_metrics(workdir, "eval")
    assert sorted(evals) == [0, 3, 6]  # Step 0: eval_at_start.
    assert evals[6]["loss"] < evals[0]["loss"]
    compiles = {step: record["compiles"] for step, record in train.items()}
    # Eval compiled at step 0, the train step at step 1: step 2 compiles nothing.
    assert compiles[1] == compiles[2]
    # The first save (step 2) may compile Orbax's shard slicing; after it, the eval at step 3
    # and the saves at steps 4 and 6 compile nothing.
    assert compiles[3] == compiles[4] == compiles[5] == compiles[6]

    # Resume: continues from step 6 without an eval at start. The restored state has the
    # shardings the train step was compiled for: steps 8 and 9 compile nothing.
    settings["train.checkpoint_every"] = 5
    result = trainer.train(corpus_config(corpus_dir, **settings, **{"train.steps": 10}), workdir)
    assert result["start_step"] == 6
    train = read_metrics(workdir, "train")
    assert sorted(train) == list(range(1, 11))
    assert train[7]["compiles"] == train[8]["compiles"] == train[9]["compiles"]
    assert sorted(read_metrics(workdir, "eval")) == [0, 3, 6, 9, 10]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["4", "6", "10"]


def test_missing_dataset_fails_before_compilation(tmp_path):
    cfg = corpus_config(str(tmp_path), **{"data.dataset": "no_such_dataset"})
    before = compilation.compile_count()
    with pytest.raises(Exception, match=r"no_such_dataset") as info:
        experiment.build_experiment(cfg)
    assert str(tmp_path) in str(info.value)
    assert compilation.compile_count() == before


def test_unknown_split_is_a_config_error(corpus_dir):
    cfg = corpus_config(corpus_dir, **{"data.train_split": "training"})
    with pytest.raises(ConfigError, match=r"no split 'training'; it has \['train', 'validation'\]"):
        experiment.build_experiment(cfg)


def _train_command(workdir, data_dir, cache_dir, steps):
    fields = {
        "model.dropout_rate": 0.1,
        "train.checkpoint_every": 20,
        "optimizer.warmup_steps": 10,
    }
    return [sys.executable, *tiny_train_args(workdir, data_dir, steps, cache_dir, **fields)]


def test_killed_run_resumes_bit_identically(corpus_dir, tmp_path):
    """SIGKILL after a checkpoint, relaunch the same command: the same losses as no kill."""
    steps = 160
    cache = str(tmp_path / "xla_cache")
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(
        _train_command(full, corpus_dir, cache, steps), check=True, capture_output=True, timeout=300
    )
    # experiments/train.py draws the curves once the run is done.
    curves = matplotlib.image.imread(os.path.join(full, "curves.png"))
    assert curves.ndim == 3 and min(curves.shape[:2]) > 100

    proc = subprocess.Popen(
        _train_command(killed, corpus_dir, cache, steps),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not os.path.isdir(os.path.join(killed, "checkpoints", "40")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    logged_before_kill = max(read_metrics(killed, "train"))
    assert logged_before_kill < steps

    subprocess.run(
        _train_command(killed, corpus_dir, cache, steps),
        check=True,
        capture_output=True,
        timeout=300,
    )
    expected, resumed = read_metrics(full, "train"), read_metrics(killed, "train")
    assert sorted(resumed) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        assert resumed[step]["loss"] == expected[step]["loss"], step  # Bit-identical on CPU.
    assert expected[steps]["loss"] < expected[1]["loss"]
    saved = json.load(open(os.path.join(killed, "config.json")))
    assert saved["model"]["num_layers"] == 1 and saved["train"]["steps"] == steps
