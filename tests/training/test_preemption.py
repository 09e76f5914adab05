"""SIGTERM/SIGINT: the run checkpoints the step it reached, exits 0; a relaunch resumes exactly,
and its log intervals cover the same steps as an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from testutil import tiny_train_args

from t5x_like.training import preemption
from t5x_like.training.metrics_writer import read_metrics

STEPS = 400
LOG_EVERY = 7  # Not a divisor of where the stop lands (most of the time): an interval straddles it.


def _train_command(workdir, data_dir, cache_dir):
    fields = {
        "model.dropout_rate": 0.1,
        # Only the final step and the preemption save checkpoints.
        "train.checkpoint_every": 10 * STEPS,
        "optimizer.warmup_steps": 10,
        "train.log_every": LOG_EVERY,
    }
    return [sys.executable, *tiny_train_args(workdir, data_dir, STEPS, cache_dir, **fields)]


def _logged_steps(workdir):
    try:
        return read_metrics(workdir, "train")
    except (FileNotFoundError, ValueError):  # Not written yet, or a line half written.
        return {}


def _checkpoints(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_sigterm_checkpoints_exits_0_and_resumes_exactly(corpus_dir, tmp_path):
    cache = str(tmp_path / "xla_cache")
    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")
    proc = subprocess.Popen(
        _train_command(stopped, corpus_dir, cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while max(_logged_steps(stopped), default=0) < LOG_EVERY:
            assert proc.poll() is None, "the run ended before it could be stopped"
            assert time.time() < deadline, "no training progress within 240s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    [reached] = _checkpoints(stopped)  # Saved at the step it reached, nothing else.
    assert LOG_EVERY <= reached < STEPS
    assert "SIGTERM received: finishing the current step" in stderr
    assert f"Stopped by SIGTERM after step {reached} of {STEPS}; checkpoint " in stderr

    relaunch = subprocess.run(
        _train_command(stopped, corpus_dir, cache), capture_output=True, text=True, timeout=300
    )
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"Resumed from {stopped}/checkpoints/{reached}." in relaunch.stderr
    subprocess.run(
        _train_command(full, corpus_dir, cache), check=True, capture_output=True, timeout=300
    )
    expected, resumed = read_metrics(full, "train"), read_metrics(stopped, "train")
    intervals = [*range(LOG_EVERY, STEPS + 1, LOG_EVERY), STEPS]
    assert sorted(resumed) == sorted(expected) == sorted(set(intervals))
    for step in intervals:  # The interval across the stop too: the same steps' mean.
        assert resumed[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-6), step
    assert _checkpoints(stopped) == [reached, STEPS]


def test_guard_records_signals_and_restores_handlers():
    before = {sig: signal.getsignal(sig) for sig in preemption.SIGNALS}
    with preemption.PreemptionGuard() as guard:
        assert not guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # Repeated: still a graceful stop.
        assert guard.should_stop(2) and guard.signal_name == "SIGTERM"
    assert {sig: signal.getsignal(sig) for sig in preemption.SIGNALS} == before


def test_second_sigint_aborts_hard():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with preemption.PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert guard.should_stop(1) and guard.signal_name == "SIGINT"
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the second SIGINT did not abort")
    assert signal.getsignal(signal.SIGINT) is before


def test_double_ctrl_c_aborts_with_one_line(corpus_dir, tmp_path):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(
        _train_command(workdir, corpus_dir, str(tmp_path / "xla_cache")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 240
        while max(_logged_steps(workdir), default=0) < LOG_EVERY:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline, "no training progress within 240s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        # The second Ctrl-C once the first one is seen (two at once arrive as one).
        while not any("SIGINT received" in line for line in lines):
            assert time.time() < deadline and proc.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    aborted = [line for line in lines if "Aborted by a second Ctrl-C" in line]
    assert len(aborted) == 1, stderr[-3000:]
