"""A SIGTERM to one process of a 2-process run stops both after the same step, checkpointed."""

import os
import signal
import sys
import time

from testutil import free_port, processes, tiny_train_args

from t5x_like.training.metrics_writer import read_metrics

STEPS = 2000


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
    workdir, cache, port = str(tmp_path / "run"), str(tmp_path / "xla_cache"), free_port()
    logs = [tmp_path / f"process_{p}.log" for p in range(2)]
    commands = [_command(workdir, corpus_dir, cache, port, p) for p in range(2)]
    with processes(commands, logs, devices_each=4) as procs:
        deadline = time.time() + 240
        while max(_logged(workdir), default=0) < 3:
            assert all(p.poll() is None for p in procs), "a process ended before the signal"
            assert time.time() < deadline, "no training progress within 240s"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)  # Process 0 learns of it through the collective.
        codes = [p.wait(timeout=120) for p in procs]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]
    reached = max(read_metrics(workdir, "train"))
    assert 3 <= reached < STEPS
    checkpoints = [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
    assert checkpoints == [str(reached)]
    assert f"Stopped by SIGTERM after step {reached} of {STEPS}" in outputs[1]
    assert f"Stopped by a stop signal on another process after step {reached} " in outputs[0]
