"""Multi-process training on one machine: 2 processes x 4 CPU devices (gloo over 127.0.0.1)
train like 1 process x 8 devices, their checkpoints resume on another process count, and a
missing process is a clear error within the timeout instead of a hang."""

import json
import logging as pylogging
import os
import pathlib
import sys
import time

import pytest
import testutil
from absl import logging
from testutil import free_port, tiny_train_args

from t5x_like import distributed, log_setup
from t5x_like.data import sharded_iterator
from t5x_like.training.metrics_writer import read_metrics

STEPS = 9
SAVED = 6  # The multi-process run stops (and checkpoints) here; resumes go on to STEPS.
RTOL = 1e-5  # Cross-process reductions may sum in another order.
JOB_TIMEOUT_S = 240


def _train_args(workdir, data_dir, cache_dir, steps):
    # A constant schedule: a run stopped at SAVED and resumed to STEPS follows the same
    # learning rates as one run of STEPS.
    fields = {
        "train.checkpoint_every": 3,
        "optimizer.schedule": "constant",
        "optimizer.warmup_steps": 2,
    }
    return tiny_train_args(workdir, data_dir, steps, cache_dir, **fields)


def _run_job(args, processes, devices_each, log_dir, timeout=JOB_TIMEOUT_S, extra=()):
    """Runs `processes` copies of the command (each with its --process_id) to completion;
    returns their exit codes and combined outputs. Every process is killed on the way out."""
    dist = []
    if processes > 1:
        dist = [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={processes}"]
    dist += ["--initialization_timeout=60", "--barrier_timeout=60", *extra]
    commands = [
        [sys.executable, *args, *dist, *([f"--process_id={p}"] if processes > 1 else [])]
        for p in range(processes)
    ]
    logs = [
        os.path.join(log_dir, f"process_{p}_{time.monotonic_ns()}.log") for p in range(processes)
    ]
    with testutil.processes(commands, logs, devices_each) as procs:
        deadline = time.monotonic() + timeout
        codes = [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc in procs]
    outputs = [pathlib.Path(log).read_text() for log in logs]
    return codes, outputs


def _assert_ok(codes, outputs):
    for code, out in zip(codes, outputs, strict=True):
        assert code == 0, out[-3000:]


def _assert_losses_close(got, expected, steps):
    for step in steps:
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=RTOL), step


def test_two_processes_train_like_one_and_resume_on_another_count(corpus_dir, tmp_path):
    """1 x 8 devices for STEPS steps; 2 x 4 for SAVED steps, then resumed by 1 process to
    STEPS: the same losses at every step."""
    cache = str(tmp_path / "xla_cache")
    logs = str(tmp_path)
    ref, two = tmp_path / "one_process", tmp_path / "two_processes"

    _assert_ok(*_run_job(_train_args(ref, corpus_dir, cache, STEPS), 1, 8, logs))
    expected = read_metrics(str(ref), "train")
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert expected[STEPS]["loss"] < expected[1]["loss"]

    # As two slices: the data axis spans the processes (a hybrid mesh), fsdp/tensor do not.
    two_slices = _train_args(two, corpus_dir, cache, SAVED) + ["--config.mesh.num_slices=2"]
    codes, outputs = _run_job(two_slices, 2, 4, logs)
    _assert_ok(codes, outputs)
    assert "All 2 processes joined; a collective over 8 devices works." in outputs[0]
    # Process 1 logs warnings and errors only; process 0 alone writes metrics (one line a step).
    assert "trainer.py" not in outputs[1] and "] step 1/" in outputs[0]
    with open(two / "metrics.jsonl") as f:
        assert len(f.readlines()) == SAVED
    got = read_metrics(str(two), "train")
    assert sorted(got) == list(range(1, SAVED + 1))
    _assert_losses_close(got, expected, got)
    # The collective save wrote one checkpoint per step, holding every shard's position.
    assert sorted(os.listdir(two / "checkpoints"), key=int) == ["3", "6"]
    with open(two / "checkpoints" / str(SAVED) / "data_iterator" / "metadata") as f:
        state = json.load(f)
    assert state["format"] == sharded_iterator.STATE_FORMAT
    assert state["num_shards"] == 8 and len(state["shards"]) == 8
    with open(ref / "checkpoints" / str(SAVED) / "data_iterator" / "metadata") as f:
        assert json.load(f) == state  # Same data position as the 1-process run.

    # 2 -> 1: the 2-process checkpoint resumes in one process (1 -> 2 resumes of the data
    # order are in tests/data/test_sharded_iterator.py).
    codes, outputs = _run_job(_train_args(two, corpus_dir, cache, STEPS), 1, 8, logs)
    _assert_ok(codes, outputs)
    with open(two / "metrics.jsonl") as f:
        assert len(f.readlines()) == STEPS  # Resumed at SAVED + 1, not retrained from 1.
    _assert_losses_close(read_metrics(str(two), "train"), expected, range(SAVED + 1, STEPS + 1))


def test_missing_process_fails_fast_with_a_clear_message(corpus_dir, tmp_path):
    """Process 0 of 2 alone: exits non-zero within its 5 s timeout, saying what to check."""
    args = _train_args(tmp_path / "alone", corpus_dir, "", 3)
    port = free_port()
    start = time.monotonic()
    codes, outputs = _run_job(
        args,
        1,
        4,
        str(tmp_path),
        timeout=90,
        extra=[
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            "--process_id=0",
            "--initialization_timeout=5",
        ],
    )
    elapsed = time.monotonic() - start
    assert codes == [distributed.EXIT_NOT_JOINED], outputs[0][-2000:]
    assert elapsed < 60
    assert "Not all of the 2 processes joined within 5 s" in outputs[0]
    assert (
        f"--process_id=0..1, --num_processes=2 and --coordinator_address=127.0.0.1:{port}"
        in (outputs[0])
    )
    assert not (tmp_path / "alone").exists()  # It gave up before touching the workdir.


@pytest.fixture
def no_cluster(monkeypatch):
    """No JAX_* variables and no detected cluster: settings come from the arguments only."""
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_detected_cluster", lambda: None)


def test_single_process_settings_initialise_nothing(no_cluster, monkeypatch):
    assert distributed.initialize("auto") is False
    assert distributed.initialize("on", num_processes=1) is False
    assert distributed.initialize("off") is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert distributed.initialize("on", coordinator_address="127.0.0.1:1") is False


@pytest.mark.parametrize(
    "mode,kwargs,env,message",
    [
        ("on", {}, {}, r"needs --coordinator_address, --num_processes, --process_id"),
        ("auto", {"num_processes": 2}, {}, r"needs --coordinator_address, --process_id \(or"),
        (
            "auto",
            {"num_processes": 2, "process_id": 2},
            {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"},
            r"--process_id=2 must be in 0..1 for --num_processes=2",
        ),
        ("auto", {}, {"JAX_NUM_PROCESSES": "two"}, r"JAX_NUM_PROCESSES='two' must be an integer"),
        ("off", {"num_processes": 4}, {}, r"--distributed=off contradicts num_processes=4"),
        ("sometimes", {}, {}, r"--distributed='sometimes' must be one of"),
    ],
)
def test_inconsistent_settings_are_clear_errors(
    no_cluster, monkeypatch, mode, kwargs, env, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.initialize(mode, **kwargs)


def test_processes_other_than_0_log_warnings_only_with_their_index():
    handler = logging.get_absl_handler()
    # The logger's own level, not absl's verbosity: set_verbosity would pin a level that
    # pytest's caplog relies on being unset (later tests capture INFO records).
    level = logging.get_absl_logger().level
    try:
        log_setup.setup_logging(process_index=1, process_count=2)
        assert logging.get_verbosity() == logging.WARNING
        record = pylogging.LogRecord(
            "x", pylogging.WARNING, __file__, 1, "disk %s", ("full",), None
        )
        assert handler.filter(record)
        assert record.getMessage() == "[process 1/2] disk full"
        log_setup.setup_logging(process_index=0, process_count=2)
        assert logging.get_verbosity() == logging.INFO
        record = pylogging.LogRecord("x", pylogging.INFO, __file__, 1, "step %d", (3,), None)
        assert handler.filter(record) and record.getMessage() == "step 3"
    finally:
        log_setup.setup_logging(process_index=0, process_count=1)  # Drops the prefix filter.
        logging.get_absl_logger().setLevel(level)
