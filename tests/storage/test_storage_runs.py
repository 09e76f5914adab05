"""experiments/train.py, eval.py and infer.py on gs:// and s3:// workdirs (local emulators), as
real subprocesses: a SIGTERM save, a relaunch that resumes with the losses of an uninterrupted
local run, a damaged newest checkpoint that falls back to the one before, eval (gs) and infer
(s3) reading the bucket, TensorBoard events read back, a 2-process run writing one set of
checkpoints (s3); an unreachable bucket fails before step 1 with one line.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
from testutil import REPO, free_port, processes, tiny_train_args

from t5x_like import storage
from t5x_like.training.metrics_writer import read_metrics

STEPS = 300
LOG_EVERY = 7


def _command(workdir: str, data_dir: str, cache: str, steps: int = STEPS) -> list[str]:
    fields = {"train.checkpoint_every": 10 * STEPS, "train.log_every": LOG_EVERY}
    return [sys.executable, *tiny_train_args(workdir, data_dir, steps, cache, **fields)]


def _env() -> dict[str, str]:
    # The emulator variables are in os.environ (conftest); a dead store fails fast in tests.
    return {**os.environ, "T5X_LIKE_STORAGE_PROBE_TIMEOUT_S": "5", "T5X_LIKE_LEASE_TTL_S": "20"}


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


def _logged(workdir: str) -> dict[int, dict]:
    try:
        return read_metrics(workdir, "train")
    except (FileNotFoundError, ValueError, OSError):
        return {}


def _steps(workdir: str) -> list[int]:
    return sorted(
        int(n) for n in storage.listdir(storage.join(workdir, "checkpoints")) if n.isdigit()
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def reference(corpus_dir, cache, tmp_path_factory) -> dict[int, dict]:
    """The train records of an uninterrupted run in a local workdir."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    result = _run(_command(workdir, corpus_dir, cache))
    assert result.returncode == 0, result.stderr[-3000:]
    return read_metrics(workdir, "train")


def _sigterm_then_resume(workdir: str, data_dir: str, cache: str) -> int:
    """Trains into `workdir`, SIGTERMs it after a logged interval, relaunches to the end;
    returns the step the stop checkpointed."""
    proc = subprocess.Popen(
        _command(workdir, data_dir, cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        deadline = time.time() + 240
        while max(_logged(workdir), default=0) < LOG_EVERY:
            assert proc.poll() is None, "the run ended before it could be stopped"
            assert time.time() < deadline, "no training progress within 240s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    [reached] = _steps(workdir)
    assert LOG_EVERY <= reached < STEPS
    assert f"Stopped by SIGTERM after step {reached} of {STEPS}; checkpoint " in stderr
    relaunch = _run(_command(workdir, data_dir, cache))
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"Resumed from {workdir}/checkpoints/{reached}." in relaunch.stderr
    return reached


def _events(workdir: str) -> dict[str, dict[int, float]]:
    """tag -> step -> value of the scalars in the run's TensorBoard event objects, framing and
    checksums checked with tensorboardX's own crc."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    directory = storage.join(workdir, "tensorboard")
    names = [n for n in storage.listdir(directory) if "tfevents" in n]
    assert names, f"no event files in {directory}"
    out: dict[str, dict[int, float]] = {}
    for name in names:
        data, offset = storage.read_bytes(storage.join(directory, name)), 0
        while offset < len(data):
            header = data[offset : offset + 8]
            (length,) = struct.unpack("Q", header)
            assert struct.unpack("I", data[offset + 8 : offset + 12])[0] == masked_crc32c(header)
            body = data[offset + 12 : offset + 12 + length]
            (crc,) = struct.unpack("I", data[offset + 12 + length : offset + 16 + length])
            assert crc == masked_crc32c(body)
            offset += 16 + length
            event = event_pb2.Event.FromString(body)
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def _corrupt_newest(workdir: str) -> int:
    """Overwrites every array data object of the newest checkpoint with garbage."""
    import fsspec

    step = _steps(workdir)[-1]
    state = storage.join(workdir, "checkpoints", str(step), "state")
    fs, root = fsspec.core.url_to_fs(state)
    damaged = 0
    for key in fs.find(root):
        if "/d/" in key:
            fs.pipe_file(key, b"garbage" * 8)
            damaged += 1
    assert damaged, f"no data objects under {state}"
    return step


def test_train_sigterm_resume_eval_infer(store, corpus_dir, cache, reference):
    workdir = store.url("e2e", "run")
    reached = _sigterm_then_resume(workdir, corpus_dir, cache)

    # The relaunch resumed exactly: every interval's loss equals the uninterrupted run's.
    resumed = read_metrics(workdir, "train")
    assert sorted(resumed) == sorted(reference)
    assert {s: r["loss"] for s, r in resumed.items()} == {
        s: r["loss"] for s, r in reference.items()
    }
    assert _steps(workdir) == [reached, STEPS]
    for name in ("config.json", "curves.png"):
        assert storage.isfile(storage.join(workdir, name)), name
    assert storage.listdir(storage.join(workdir, storage.METRICS_DIR))
    assert not os.path.exists(os.path.join(os.getcwd(), f"{store.scheme}:"))  # No local copy.
    assert not storage.exists(storage.join(workdir, ".lock"))  # The lease was released.

    # TensorBoard: both runs' event objects, the losses the metrics hold.
    losses = _events(workdir)["train/loss"]
    assert set(losses) == set(reference)
    assert losses[STEPS] == pytest.approx(reference[STEPS]["loss"], rel=1e-6)

    # eval.py (on gs) and infer.py (on s3) read the bucket and write their outputs into it;
    # one script per store keeps the suite's time down, both go through the same restore.
    if store.scheme == "gs":
        script = [sys.executable, str(REPO / "experiments" / "eval.py"), f"--workdir={workdir}"]
        evaluated = _run(script)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        output = storage.join(workdir, "eval", f"step_{STEPS}.json")
        report = json.loads(storage.read_text(output))
        assert report["step"] == STEPS and report["metrics"]["loss"] > 0
    else:
        script = [sys.executable, str(REPO / "experiments" / "infer.py"), f"--workdir={workdir}"]
        inferred = _run([*script, "--prompt=The model", "--max_new_tokens=4"])
        assert inferred.returncode == 0, inferred.stderr[-3000:]
        output = storage.join(workdir, "infer", f"step_{STEPS}.jsonl")
        assert json.loads(storage.read_text(output).splitlines()[0])["prompt"] == "The model"

    # A damaged newest checkpoint: moved aside, the one before restored and trained on.
    damaged = _corrupt_newest(workdir)
    again = _run(_command(workdir, corpus_dir, cache))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resumed from {workdir}/checkpoints/{reached}." in again.stderr
    aside = [n for n in storage.listdir(storage.join(workdir, "checkpoints")) if ".corrupt-" in n]
    assert [n.split(".")[0] for n in aside] == [str(damaged)]
    assert _steps(workdir) == [reached, STEPS]
    assert read_metrics(workdir, "train")[STEPS]["loss"] == reference[STEPS]["loss"]


def test_unreachable_bucket_fails_before_step_1(store, corpus_dir, cache):
    """The newcomer case: a bucket that does not exist (s3) / a store that does not answer
    (gs): exit 1 with one line naming the workdir, before any training step."""
    command_url = store.url("x").replace(store.bucket, "no-such-bucket")
    command = _command(command_url, corpus_dir, cache)
    env = _env()
    if store.scheme == "gs":  # Nothing listens there.
        env["STORAGE_EMULATOR_HOST"] = env["TENSORSTORE_GCS_HTTP_URL"] = "http://127.0.0.1:9"
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR (")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("ERROR (StorageError): --workdir=")
    assert f"--workdir={store.scheme}://no-such-bucket/x is not reachable" in errors[0]
    assert "Traceback" not in result.stderr
    assert "step 1/" not in result.stderr and "First step" not in result.stderr
    # eval.py / infer.py on the same workdir: the same line, nothing else.
    for script in ("eval.py", "infer.py"):
        args = [sys.executable, str(REPO / "experiments" / script), f"--workdir={command_url}"]
        if script == "infer.py":
            args.append("--prompt=Hello")
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 1, (script, result.stderr[-3000:])
        assert "Traceback" not in result.stderr, (script, result.stderr[-3000:])
        last = result.stderr.strip().splitlines()[-1]
        assert f"--workdir={command_url} is not reachable" in last, (script, last)


def test_two_processes_write_one_checkpoint(s3_store, corpus_dir, cache, tmp_path):
    """A 2-process run (jax.distributed on 127.0.0.1) into one s3:// workdir: both processes
    write their shards of the same checkpoints; process 0 alone writes metrics and config."""
    workdir, port = s3_store.url("two", "run"), free_port()
    fields = {"train.checkpoint_every": 3, "train.log_every": 3, "optimizer.warmup_steps": 2}
    commands = [
        [
            sys.executable,
            *tiny_train_args(workdir, corpus_dir, 6, cache, **fields),
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={p}",
            "--initialization_timeout=60",
            "--barrier_timeout=60",
        ]
        for p in range(2)
    ]
    logs = [tmp_path / f"process_{p}.log" for p in range(2)]
    with processes(commands, logs, devices_each=4) as procs:
        codes = [p.wait(timeout=300) for p in procs]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert _steps(workdir) == [3, 6]
    assert sorted(read_metrics(workdir, "train")) == [3, 6]
    assert storage.isfile(storage.join(workdir, "config.json"))
    assert not storage.exists(storage.join(workdir, ".lock"))


def test_bucket_lost_mid_run_exits_1(s3_store, corpus_dir, cache, tmp_path):
    """The bucket disappears while the run trains (only the final log and save write to it):
    the run ends with exit 1 and one line, never 0 and never "Done"."""
    import boto3

    boto3.client("s3", endpoint_url=s3_store.endpoint).create_bucket(Bucket="t5x-lost")
    workdir = "s3://t5x-lost/run"
    steps = 400
    fields = {"train.checkpoint_every": 10 * steps, "train.log_every": 10 * steps}
    command = [sys.executable, *tiny_train_args(workdir, corpus_dir, steps, cache, **fields)]
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.time() + 240
        while "First step took" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no first step within 240s"
            time.sleep(0.1)
        bucket = boto3.resource("s3", endpoint_url=s3_store.endpoint).Bucket("t5x-lost")
        bucket.objects.all().delete()
        bucket.delete()
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 1, output[-3000:]
    assert "Done: step" not in output
    errors = [line for line in output.splitlines() if line.startswith("ERROR (")]
    assert len(errors) == 1 and "bucket does not exist" in errors[0], output[-3000:]
