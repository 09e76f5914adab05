"""SIGTERM/SIGINT: the run checkpoints the step it reached, exits 0; a relaunch resumes exactly."""

import os
import signal
import subprocess
import sys
import time

import pytest
from testutil import tiny_train_args

from t5x_like.training import preemption
from t5x_like.training.metrics_writer import read_metrics

STEPS = 400


def _train_command(workdir, data_dir, cache_dir):
    fields = {
        "model.dropout_rate": 0.1,
        # Only the final step and the preemption save checkpoints.
        "train.checkpoint_every": 10 * STEPS,
        "optimizer.warmup_steps": 10,
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
        while max(_logged_steps(stopped), default=0) < 3:
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
    reached = max(read_metrics(stopped, "train"))
    assert 3 <= reached < STEPS
    assert _checkpoints(stopped) == [reached]  # Saved at the step it reached, nothing else.
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
    assert sorted(resumed) == sorted(expected) == list(range(1, STEPS + 1))
    for step in range(reached + 1, STEPS + 1):
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
