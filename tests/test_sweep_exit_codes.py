"""A sweep's exit code tells the truth: a member stopped by a signal is not a finished run."""

import json
import os
import signal
import subprocess
import sys
import time

from testutil import REPO, tiny_train_args

from t5x_like.tools import sweep

SCRIPT = str(REPO / "experiments" / "sweep.py")


def _member_pid(workdir: str) -> int | None:
    """The pid of the train.py process whose --workdir is `workdir` (None until it starts)."""
    found = subprocess.run(
        ["pgrep", "-f", "--", f"--workdir={workdir} "], capture_output=True, text=True
    )
    pids = [int(p) for p in found.stdout.split()]
    return pids[0] if pids else None


def test_a_member_stopped_by_sigterm_fails_the_sweep(corpus_dir, tmp_path):
    """The member saves and exits 0 on SIGTERM (as train.py should); the sweep exits 1 and
    names it as stopped, where it used to log "finished" and exit 0."""
    root = tmp_path / "root"
    member = root / "seed=0"
    overrides = tiny_train_args(
        "unused", corpus_dir, 100_000, **{"train.checkpoint_every": 100_000}
    )[2:]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    command = [
        sys.executable,
        SCRIPT,
        f"--workdir={root}",
        "--sweep=seed=0",
        "--device_count=1",
        "--config.optimizer.warmup_steps=2",
        *overrides,
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 180
        metrics = member / "metrics.jsonl"
        while not (metrics.exists() and '"train"' in metrics.read_text()):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the member never logged a step"
            time.sleep(0.1)
        pid = _member_pid(str(member))
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert "Not every run finished: 1 of 1 runs stopped: seed=0." in stderr
    assert "stopped before its last step (100000)" in stderr
    # The member itself did what a signalled train.py does: saved its step and exited 0.
    launches = json.load(open(member / sweep.RUN_RECORD))["launches"]
    assert [launch["returncode"] for launch in launches] == [0]
    saved = [int(name) for name in os.listdir(member / "checkpoints") if name.isdigit()]
    assert len(saved) == 1 and 0 < saved[0] < 100_000
