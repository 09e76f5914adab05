"""Workdir guards: one live run per workdir (a lock the OS frees), no silent model-shape change."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest
from testutil import REPO, corpus_config, tiny_config

from t5x_like import config as config_lib
from t5x_like import workdir as workdir_lib
from t5x_like.experiment import trainer
from t5x_like.training import compilation

HOLD_LOCK = """
import sys, time
from t5x_like import workdir
with workdir.WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def lock_holder(tmp_path):
    """A subprocess holding the lock of tmp_path/run; yields (workdir, process)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(workdir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield str(workdir), proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_second_run_refuses_until_the_holder_dies(lock_holder, corpus_dir):
    workdir, proc = lock_holder
    cfg = corpus_config(corpus_dir)
    before = compilation.compile_count()
    with pytest.raises(workdir_lib.WorkdirLockedError) as info:
        trainer.train(cfg, workdir)
    message = str(info.value)
    assert message.startswith(
        f"The workdir {workdir} is in use by another training run (host {socket.gethostname()}, "
        f"pid {proc.pid}, started 20"
    )
    assert "pass another --workdir" in message and "a crashed run never blocks" in message
    assert compilation.compile_count() == before
    assert not os.path.exists(os.path.join(workdir, "config.json"))

    proc.send_signal(signal.SIGKILL)  # A crash: no cleanup code runs in the holder.
    proc.wait(timeout=30)
    with workdir_lib.WorkdirLock(workdir):
        with pytest.raises(workdir_lib.WorkdirLockedError):  # Held now, by this process.
            workdir_lib.WorkdirLock(workdir).__enter__()
    with workdir_lib.WorkdirLock(workdir):  # Released on exit.
        pass


def _saved_run(tmp_path, checkpoints: bool, cfg=None) -> tuple[str, object]:
    """A workdir whose config.json is `cfg` (default tiny_config), with a checkpoint or only
    the tmp dir of an unfinished one."""
    workdir = str(tmp_path / "run")
    os.makedirs(os.path.join(workdir, "checkpoints", "5" if checkpoints else "5.orbax-tmp"))
    cfg = cfg or tiny_config()
    config_lib.save_config(cfg, workdir)
    return workdir, cfg


def test_changed_model_shape_is_refused_with_a_diff(tmp_path, corpus_dir, caplog):
    caplog.set_level(logging.INFO)
    saved_cfg = corpus_config(corpus_dir)
    saved_cfg.model.vocab_size = 256  # Resolved from the vocabulary, as a run saves it.
    workdir, _ = _saved_run(tmp_path, checkpoints=True, cfg=saved_cfg)
    cfg = corpus_config(corpus_dir, **{"model.num_layers": 4, "train.steps": 20})
    saved = open(os.path.join(workdir, "config.json")).read()
    before = compilation.compile_count()
    with pytest.raises(workdir_lib.ConfigChangeError) as info:
        trainer.train(cfg, workdir)
    assert isinstance(info.value, config_lib.ConfigError)
    assert str(info.value) == (
        f"The config differs from the one {workdir} was trained with, in fields its checkpoints "
        "depend on: model.num_layers: saved 2, now 4. Use a new --workdir for the new config, or "
        f"resume with the saved one (--config=configs/saved_run.py:{workdir}), or pass "
        "--config.train.allow_config_change=True to try anyway."
    )
    assert compilation.compile_count() == before  # Refused before anything compiled.
    assert "train.steps: saved 10, now 20" in caplog.text  # Logged, not refused.
    assert open(os.path.join(workdir, "config.json")).read() == saved  # Not overwritten.


def test_structural_and_other_changes(tmp_path, caplog):
    workdir, cfg = _saved_run(tmp_path, checkpoints=True)
    cfg.train.steps = 50
    cfg.optimizer.learning_rate = 1e-3
    cfg.model.dtype = "bfloat16"  # Runtime only: same params.
    with caplog.at_level(logging.INFO):
        workdir_lib.check_config_change(cfg, workdir)
    assert (
        f"Config changes since the last run in {workdir}: model.dtype: saved 'float32', now "
        "'bfloat16'; optimizer.learning_rate: saved 0.003, now 0.001; train.steps: saved 10, now 50"
    ) in caplog.text

    cfg.optimizer.name = "adafactor"
    cfg.train.nan_policy = "skip"
    cfg.optimizer.grad_clip_norm = 0.5  # Still clipping: same optimizer state.
    with pytest.raises(workdir_lib.ConfigChangeError) as info:
        workdir_lib.check_config_change(cfg, workdir)
    assert (
        "optimizer.name: saved 'adamw', now 'adafactor'; train.nan_policy: saved 'stop', "
        "now 'skip'. Use" in str(info.value)
    )
    cfg.train.allow_config_change = True
    with caplog.at_level(logging.WARNING):
        workdir_lib.check_config_change(cfg, workdir)  # Accepted, with a warning.
    assert "train.allow_config_change=True" in caplog.text


def test_shape_change_without_checkpoints_starts_afresh(tmp_path, caplog):
    workdir, cfg = _saved_run(tmp_path, checkpoints=False)
    cfg.data.vocab_size = 512
    with caplog.at_level(logging.WARNING):
        workdir_lib.check_config_change(cfg, workdir)
    assert "data.vocab_size: saved 2048, now 512" in caplog.text
    assert "it has no checkpoint yet" in caplog.text
    assert json.load(open(os.path.join(workdir, "config.json")))["data"]["vocab_size"] == 2048


@pytest.mark.parametrize(
    "change, refusal",
    [
        ({"model.d_model": 64}, r"does not fit this run's model and optimizer"),
        ({"data.num_shards": 4}, r"num_shards"),
    ],
)
def test_a_refused_resume_leaves_config_json_as_it_was(corpus_dir, tmp_path, change, refusal):
    """allow_config_change lets a changed shape through the config check, then the restore
    refuses it: config.json must still describe the checkpoints (it used to say 64), so the
    original command, eval.py and infer.py go on working."""
    workdir = str(tmp_path / "run")
    settings = {"train.steps": 4, "train.checkpoint_every": 2}
    trainer.train(corpus_config(corpus_dir, **settings), workdir)
    path = os.path.join(workdir, "config.json")
    saved = open(path).read()
    longer = {**settings, "train.steps": 6}
    changed = corpus_config(corpus_dir, **longer, **change)
    changed.train.allow_config_change = True
    with pytest.raises(config_lib.ConfigError, match=refusal):
        trainer.train(changed, workdir)
    assert open(path).read() == saved
    # The original command resumes (and only then writes its config, steps now 6).
    result = trainer.train(corpus_config(corpus_dir, **longer), workdir)
    assert result["start_step"] == 4
    assert json.load(open(path))["train"]["steps"] == 6
