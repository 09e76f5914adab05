"""Damaged checkpoints on disk and failing saves: resume from the newest readable one, lose nothing.

One real run makes checkpoints 4, 6, 8 (2 is pruned: max_to_keep=3); each case damages a copy of
them the way crashes and full disks do, then resumes.
"""

import glob
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import atomicity
from testutil import corpus_config

from t5x_like import checkpointing
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training.metrics_writer import read_metrics
from t5x_like.training.nan_guard import NonFiniteError
from t5x_like.training.train_state import TrainState

SETTINGS = {"train.steps": 8, "train.checkpoint_every": 2}


@pytest.fixture(scope="module")
def trained(corpus_dir, tmp_path_factory):
    """(workdir with checkpoints 4, 6, 8, its config, the abstract state)."""
    workdir = str(tmp_path_factory.mktemp("trained") / "run")
    cfg = corpus_config(corpus_dir, **SETTINGS)
    trainer.train(cfg, workdir)
    exp = experiment.build_experiment(cfg)
    return workdir, cfg, experiment.state_shardings(exp)[0]


def _copy(trained, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(trained[0], workdir)
    return os.path.join(workdir, "checkpoints")


def _truncate_data_files(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        os.truncate(path, os.path.getsize(path) // 2)


def _garble_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
        f.write("{garbled")


def _delete_state(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state"))


@pytest.mark.parametrize(
    "damage, error",
    [
        (_truncate_data_files, "ValueError: OUT_OF_RANGE"),
        (_garble_metadata, "JSONDecodeError"),
        (_delete_state, "FileNotFoundError: Metadata file (named _METADATA) does not exist"),
    ],
)
def test_unreadable_latest_is_moved_aside(trained, tmp_path, caplog, damage, error):
    directory = _copy(trained, tmp_path)
    damage(os.path.join(directory, "8"))
    checkpointer = checkpointing.Checkpointer(directory)
    with caplog.at_level(logging.WARNING):
        step, state = checkpointer.restore_latest(trained[2])
    assert checkpointer.all_steps() == [4, 6]
    checkpointer.close()
    assert step == 6 and int(state.step) == 6
    assert f"Checkpoint {directory}/8 is unreadable ({error}" in caplog.text
    assert f"moved it aside to {directory}/8.corrupt-" in caplog.text
    kept = sorted(os.listdir(directory))
    assert kept[:2] == ["4", "6"] and kept[2].startswith("8.corrupt-") and len(kept) == 3


def test_nothing_moves_when_no_checkpoint_is_readable(trained, tmp_path):
    directory = _copy(trained, tmp_path)
    for step in (4, 6, 8):
        _delete_state(os.path.join(directory, str(step)))
    checkpointer = checkpointing.Checkpointer(directory)
    with pytest.raises(checkpointing.CorruptCheckpointError) as info:
        checkpointer.restore_latest(trained[2])
    checkpointer.close()
    message = str(info.value)
    start = f"No checkpoint in {directory} can be restored: step 8: FileNotFoundError"
    assert message.startswith(start)
    assert "step 4: FileNotFoundError" in message and "nothing was moved or deleted" in message
    assert sorted(os.listdir(directory)) == ["4", "6", "8"]


def test_stale_tmp_dir_of_a_crashed_save_is_removed(trained, tmp_path, caplog):
    directory = _copy(trained, tmp_path)
    # What a crash during the save of step 10 leaves: Orbax writes there, renames on commit.
    tmp = os.path.join(directory, "10.orbax-checkpoint-tmp")
    shutil.copytree(os.path.join(directory, "8"), tmp)
    with caplog.at_level(logging.WARNING):
        checkpointer = checkpointing.Checkpointer(directory)
    assert checkpointer.latest_step() == 8
    assert (
        "Removing 1 unfinished checkpoint save(s) left by an interrupted run: "
        "10.orbax-checkpoint-tmp." in caplog.text
    )
    # Orbax removes it in a background thread (awaited before the first save).
    deadline = time.time() + 20
    while os.path.exists(tmp) and time.time() < deadline:
        time.sleep(0.05)
    checkpointer.close()
    assert sorted(os.listdir(directory)) == ["4", "6", "8"]


def test_resume_past_a_corrupt_latest_keeps_good_checkpoints(trained, corpus_dir, tmp_path):
    """With 8 damaged the run resumes from 6 and redoes steps 7-8 exactly; 4 and 6 survive.

    Were 8 left in place, Orbax would skip every save up to step 8 (and, on longer runs, prune
    the good checkpoints while keeping the damaged one as the newest).
    """
    directory = _copy(trained, tmp_path)
    workdir = os.path.dirname(directory)
    _truncate_data_files(os.path.join(directory, "8"))
    result = trainer.train(corpus_config(corpus_dir, **SETTINGS), workdir)
    assert result["start_step"] == 6
    names = sorted(os.listdir(directory))
    assert [n for n in names if n.isdigit()] == ["4", "6", "8"]
    assert len([n for n in names if n.startswith("8.corrupt-")]) == 1
    first, resumed = read_metrics(trained[0], "train"), read_metrics(workdir, "train")
    for step in (7, 8):
        assert resumed[step]["loss"] == first[step]["loss"], step
    checkpointer = checkpointing.Checkpointer(directory, read_only=True)
    assert checkpointer.restore_latest(trained[2])[0] == 8  # The new 8 is readable.
    checkpointer.close()


def _tiny_state():
    return TrainState(
        step=jnp.zeros((), jnp.int32), params={"w": jnp.ones((4, 4))}, opt_state={}, rng=None
    )


def test_failed_background_save_is_reported_at_the_next_check(tmp_path, monkeypatch):
    directory = str(tmp_path / "checkpoints")
    checkpointer = checkpointing.Checkpointer(directory, async_save=True)
    assert checkpointer.save(1, _tiny_state())
    checkpointer.wait_until_finished()

    async def disk_full(self, *args, **kwargs):  # The commit (rename) runs in the writer thread.
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    assert checkpointer.save(2, _tiny_state())  # Started: the failure comes later.
    deadline = time.time() + 30
    with pytest.raises(checkpointing.CheckpointSaveError) as info:
        while time.time() < deadline:  # What the trainer does after each step.
            checkpointer.check_for_errors()
            time.sleep(0.01)
    assert str(info.value) == (
        f"Checkpoint save of step 2 to {directory} failed: OSError: [Errno 28] No space left on "
        f"device. Free disk space / check the permissions of {directory} and relaunch: "
        "training resumes from step 1."
    )
    checkpointer.close()  # Does not raise the reported error again.
    assert checkpointer.all_steps() == [1]


def test_failed_save_stops_training(corpus_dir, tmp_path, monkeypatch):
    """In the trainer, the failed save of step 2 ends the run at step 3 or at the save of 4."""
    workdir = str(tmp_path / "run")
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def fail_step_2(self, *args, **kwargs):
        if "checkpoints/2" in str(self.get_final()):
            raise OSError(28, "No space left on device")
        return await finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", fail_step_2)
    with pytest.raises(checkpointing.CheckpointSaveError) as info:
        trainer.train(corpus_config(corpus_dir, **SETTINGS), workdir)
    assert str(info.value).startswith(f"Checkpoint save of step 2 to {workdir}/checkpoints failed")
    assert str(info.value).endswith("training resumes from scratch (no checkpoint yet).")
    assert 3 <= max(read_metrics(workdir, "train")) <= 4
    assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]


def _save_exploding_copy(trained, directory, source_step, target_step):
    """Saves checkpoint `target_step`: the state of `source_step` with params scaled by 1e30,
    finite (so any save accepts it) but giving a non-finite loss on the next step, as damage
    the checksums cannot see would (or a state saved by a version without them)."""
    exp = experiment.build_experiment(trained[1])
    iterator = experiment.make_train_iterator(exp)
    checkpointer = checkpointing.Checkpointer(directory, max_to_keep=10)
    state = checkpointer.restore(source_step, trained[2], iterator)
    params = jax.tree.map(lambda x: x * 1e30, state.params)
    step = jnp.asarray(target_step, state.step.dtype)
    checkpointer.save(target_step, state.replace(params=params, step=step), iterator)
    checkpointer.close()


def test_non_finite_first_step_falls_back_to_the_checkpoint_before(
    trained, corpus_dir, tmp_path, caplog
):
    directory = _copy(trained, tmp_path)
    _save_exploding_copy(trained, directory, 8, 10)
    settings = {**SETTINGS, "train.steps": 12, "train.max_to_keep": 10}
    with caplog.at_level(logging.WARNING):
        result = trainer.train(corpus_config(corpus_dir, **settings), os.path.dirname(directory))
    assert result["start_step"] == 8
    assert f"The state restored from {directory}/10 gives a non-finite step 11" in caplog.text
    assert "its state gives a non-finite step 11" in caplog.text
    names = sorted(os.listdir(directory))
    assert [n for n in names if n.isdigit()] == ["10", "12", "4", "6", "8"]
    assert len([n for n in names if n.startswith("10.corrupt-")]) == 1
    assert all(np.isfinite(v) for v in result["train"].values())


def test_non_finite_first_step_of_two_checkpoints_moves_nothing(trained, corpus_dir, tmp_path):
    directory = _copy(trained, tmp_path)
    shutil.rmtree(os.path.join(directory, "8"))
    _save_exploding_copy(trained, directory, 6, 8)
    _save_exploding_copy(trained, directory, 6, 10)
    settings = {**SETTINGS, "train.steps": 12, "train.max_to_keep": 10}
    with pytest.raises(NonFiniteError) as info:
        trainer.train(corpus_config(corpus_dir, **settings), os.path.dirname(directory))
    assert str(info.value).startswith(
        f"The states of {directory}/10 and of the checkpoint before it ({directory}/8) both "
        "give a non-finite loss on their first step"
    )
    assert sorted(os.listdir(directory)) == ["10", "4", "6", "8"]
