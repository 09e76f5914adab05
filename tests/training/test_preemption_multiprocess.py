"""A SIGTERM to one process of a 2-process run stops both after the same step, checkpointed."""

import os
import signal
import socket
import subprocess
import sys
import time

from testutil import REPO, tiny_train_args

from t5x_like.training.metrics_writer import read_metrics

STEPS = 2000


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, data_dir, cache_dir, port, process_id):
    fields = {"train.checkpoint_every": 10 * STEPS}
    return [
        sys.executable,
        *tiny_train_args(workdir, data_dir, STEPS, cache_dir, **fields),
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={process_id}",
        "--initialization_timeout=60",
        "--barrier_timeout=60",
    ]


def _logged(workdir):
    try:
        return read_metrics(workdir, "train")
    except (FileNotFoundError, ValueError):  # Not written yet, or a line half written.
        return {}


def test_sigterm_to_one_process_stops_all_at_the_same_step(corpus_dir, tmp_path):
    workdir, cache, port = str(tmp_path / "run"), str(tmp_path / "xla_cache"), _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    logs = [open(tmp_path / f"process_{p}.log", "w+") for p in range(2)]
    procs = [
        subprocess.Popen(
            _command(workdir, corpus_dir, cache, port, p),
            cwd=REPO,
            env=env,
            stdout=logs[p],
            stderr=subprocess.STDOUT,
        )
        for p in range(2)
    ]
    try:
        deadline = time.time() + 240
        while max(_logged(workdir), default=0) < 3:
            assert all(p.poll() is None for p in procs), "a process ended before the signal"
            assert time.time() < deadline, "no training progress within 240s"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)  # Process 0 learns of it through the collective.
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert codes == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]
    reached = max(read_metrics(workdir, "train"))
    assert 3 <= reached < STEPS
    checkpoints = [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    assert checkpoints == [str(reached)]
    assert f"Stopped by SIGTERM after step {reached} of {STEPS}" in outputs[1]
    assert f"Stopped by a stop signal on another process after step {reached} " in outputs[0]
