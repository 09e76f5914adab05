"""What a run prints and writes (issue 21): quiet logs on every path, one unit per metric in
every sink, a progress line between sparse log intervals, an impossible MFU flagged.

One tiny decoder-only run of experiments/train.py on a corpus it builds itself, then eval.py,
infer.py, a fine-tune (train.init_from) and a resume of it: none prints JAX's TPU probe, TFDS's
"Downloading" banner or Orbax's read-only / metadata warnings.
"""

import json
import logging
import os
import re
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2
from testutil import REPO, tiny_train_args

from t5x_like.training.metrics_writer import read_metrics

NOISE = (
    "Unable to initialize backend 'tpu'",
    "Downloading and preparing dataset",
    "downloaded and prepared",
    "Given directory is read only",
    "Metadata file does not exist",
)


def _run(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Runs the scripts concurrently (most of their time is importing JAX); stdout + stderr."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # As a user runs it.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    procs = {
        key: subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for key, args in commands.items()
    }
    return {
        key: subprocess.CompletedProcess(p.args, p.wait(timeout=300), p.stdout.read(), "")
        for key, p in procs.items()
    }


def _tensorboard_scalars(directory: str) -> dict[tuple[str, int], float]:
    """(tag, step) -> value of the scalars in a tensorboardX event directory (TFRecord frames:
    length, its CRC, an Event proto, its CRC)."""
    scalars = {}
    for name in os.listdir(directory):
        data = open(os.path.join(directory, name), "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_quiet_logs_one_unit_per_metric_and_mfu_flagged(tmp_path):
    data_dir, run = str(tmp_path / "tfds"), str(tmp_path / "run")
    settings = {
        "train.log_every": 2,
        "train.eval_every": 2,
        "train.checkpoint_every": 2,
        "train.eval_batches": 2,
        "optimizer.warmup_steps": 1,
        "train.peak_flops": 1.0,  # Far below what any machine achieves: MFU >> 1.
    }
    train = _run({"train": tiny_train_args(run, data_dir, 4, **settings)})["train"]
    assert train.returncode == 0, train.stdout[-3000:]

    workdir_flag = f"--workdir={run}"
    finetune = str(tmp_path / "finetune")
    after = _run(
        {
            "eval": [str(REPO / "experiments" / "eval.py"), workdir_flag, "--num_batches=2"],
            "infer": [
                str(REPO / "experiments" / "infer.py"),
                workdir_flag,
                "--prompt=The list",
                "--max_new_tokens=4",
            ],
            "init_from": tiny_train_args(
                finetune, data_dir, 2, **{**settings, "train.init_from": run}
            ),
        }
    )
    after["resume"] = _run({"resume": tiny_train_args(run, data_dir, 6, **settings)})["resume"]
    for name, result in {"train": train, **after}.items():
        assert result.returncode == 0, (name, result.stdout[-3000:])
        for noise in NOISE:
            assert noise not in result.stdout, (name, noise, result.stdout[-3000:])
        assert "Traceback" not in result.stdout, (name, result.stdout[-3000:])

    # MFU above 1: a warning once, "mfu invalid" on the log lines, never an `mfu` record.
    log = train.stdout
    assert log.count("a measurement problem, not a result") == 1, log[-3000:]
    assert re.search(r"step 4/4 .* FLOP/s mfu invalid ETA", log), log[-3000:]
    records = read_metrics(run, "train")
    for step in (2, 4):
        assert "mfu" not in records[step] and records[step]["mfu_invalid"] > 1
        assert records[step]["model_flops_per_sec"] > 1
    assert "peak 1 FLOP/s (given by train.peak_flops)" in log

    # One unit (fractions) in every sink: the log lines, metrics.jsonl, TensorBoard.
    evals = read_metrics(run, "eval")
    scalars = _tensorboard_scalars(os.path.join(run, "tensorboard"))
    for step in (2, 4):
        accuracy = evals[step]["accuracy"]
        assert 0 < accuracy < 1
        assert abs(scalars[("eval/accuracy", step)] - accuracy) < 1e-7  # float32 in TB.
        shown = re.search(rf"step {step} eval: .*accuracy ([0-9.e-]+)", log).group(1)
        assert float(shown) == float(f"{accuracy:.4g}")
        train_acc = records[step]["accuracy"]
        shown = re.search(rf"step {step}/4 loss \S+ acc ([0-9.]+)", log).group(1)
        assert float(shown) == round(train_acc, 3)
        assert abs(scalars[("train/accuracy", step)] - train_acc) < 1e-7
        assert scalars[("train/mfu_invalid", step)] > 1
    report = json.load(open(os.path.join(run, "eval", "step_4.json")))
    assert 0 < report["metrics"]["accuracy"] < 1


def test_progress_line_between_sparse_log_intervals(corpus_dir, tmp_path, monkeypatch, caplog):
    """With train.log_every beyond the run, a progress line still comes every
    PROGRESS_EVERY_S seconds (0 here: after every step past the first)."""
    from testutil import corpus_config

    from t5x_like.experiment import trainer

    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)
    cfg = corpus_config(corpus_dir, **{"train.log_every": 100, "train.steps": 4})
    with caplog.at_level(logging.INFO):
        trainer.train(cfg, str(tmp_path / "run"))
    lines = [r.getMessage() for r in caplog.records if "(in progress:" in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == ["step 2/4", "step 3/4"], lines
    assert all(re.search(r"steps/s, \d+ tokens/s since the last log line\) ETA", x) for x in lines)
    assert sorted(read_metrics(str(tmp_path / "run"), "train")) == [4]  # Only the log interval.
