"""A run whose checkpoint save fails in the background exits 1 promptly; it never hangs."""

import contextlib
import os
import stat
import subprocess
import sys

from testutil import tiny_train_args


@contextlib.contextmanager
def _read_only(directory: str):
    """`directory` read-only for this process: a read-only bind mount as root (a mode change
    does not stop root), the mode bits otherwise."""
    if os.geteuid() != 0:
        os.chmod(directory, stat.S_IRUSR | stat.S_IXUSR)
        try:
            yield
        finally:
            os.chmod(directory, stat.S_IRWXU)
        return
    subprocess.run(["mount", "--bind", directory, directory], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
        yield
    finally:
        subprocess.run(["umount", directory], check=True)


def test_read_only_checkpoints_end_the_run_with_exit_1(corpus_dir, tmp_path):
    """Async saves (the default) into a read-only checkpoints/: the failure is reported and the
    process exits 1, where it used to wait forever on Orbax's background threads."""
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(parents=True)
    fields = {"train.checkpoint_every": 2, "optimizer.warmup_steps": 2}
    command = [sys.executable, *tiny_train_args(str(workdir), corpus_dir, 8, **fields)]
    with _read_only(str(checkpoints)):
        # It used to hang forever: the timeout is the failure this test guards against.
        result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR (")]
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"ERROR (CheckpointSaveError): Checkpoint save of step 2 to {checkpoints} failed: "
    )
    assert "Read-only file system" in errors[0]
    assert errors[0].endswith("training resumes from scratch (no checkpoint yet).")
    assert os.listdir(checkpoints) == []
