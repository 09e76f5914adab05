"""Flipped bytes in a real checkpoint's largest data file: the resumed run notices (a decode
error or the saved checksums), moves that checkpoint aside, resumes from the one before and
trains exactly as an undamaged run does."""

import glob
import os
import shutil
import subprocess
import sys

import pytest
from testutil import tiny_train_args

from t5x_like.training.metrics_writer import read_metrics


def _train(workdir, corpus_dir, cache, steps):
    fields = {
        "train.checkpoint_every": 4,
        "train.max_to_keep": 5,
        "optimizer.warmup_steps": 2,
    }
    args = tiny_train_args(workdir, corpus_dir, steps, cache, **fields)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def _flip_bytes_in_largest_file(step_dir):
    """XORs 4 bytes at each eighth of the largest data file. (One spot is not always damage:
    OCDBT data files can hold superseded, unreferenced regions; seven spots hit used bytes.)"""
    files = [
        p
        for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
        if os.path.isfile(p)
    ]
    largest = max(files, key=os.path.getsize)
    size = os.path.getsize(largest)
    with open(largest, "r+b") as f:
        for eighth in range(1, 8):
            f.seek(size * eighth // 8)
            chunk = f.read(4)
            f.seek(-len(chunk), os.SEEK_CUR)
            f.write(bytes(b ^ 0xFF for b in chunk))
    return largest


def test_flipped_bytes_move_the_checkpoint_aside_and_resume_exactly(corpus_dir, tmp_path):
    cache = str(tmp_path / "xla_cache")
    workdir = str(tmp_path / "run")
    first = _train(workdir, corpus_dir, cache, 12)
    assert first.returncode == 0, first.stderr[-3000:]
    expected = read_metrics(workdir, "train")
    checkpoints = os.path.join(workdir, "checkpoints")
    shutil.rmtree(os.path.join(checkpoints, "12"))  # As if killed before saving 12.
    flipped = _flip_bytes_in_largest_file(os.path.join(checkpoints, "8"))

    resumed = _train(workdir, corpus_dir, cache, 12)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr, resumed.stderr[-3000:]
    resumed_line = [x for x in resumed.stderr.splitlines() if "Resumed from" in x]
    assert f"Checkpoint {checkpoints}/8 is unreadable (" in resumed.stderr, (flipped, resumed_line)
    assert f"Checkpoint {checkpoints}/8 is unreadable (" in resumed.stderr
    assert f"moved it aside to {checkpoints}/8.corrupt-" in resumed.stderr
    assert f"Resumed from {checkpoints}/4." in resumed.stderr
    names = sorted(os.listdir(checkpoints))
    assert [n for n in names if n.isdigit()] == ["12", "4", "8"]
    assert len([n for n in names if n.startswith("8.corrupt-")]) == 1
    got = read_metrics(workdir, "train")
    for step in range(5, 13):  # Redone from checkpoint 4: the same losses as the first time.
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-6), step
