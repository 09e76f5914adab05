"""train.nan_policy: 'stop' names the bad step and never saves its state; 'skip' drops the update.

A non-finite step is injected by poisoning one batch: an Inf loss weight makes the loss and every
gradient of that step non-finite, at a known step.
"""

import os

import jax
import numpy as np
import pytest
from testutil import corpus_config

from t5x_like import checkpointing
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training import nan_guard
from t5x_like.training.metrics_writer import read_metrics


class _PoisonedIterator:
    """The train iterator with an Inf loss weight in its `bad_step`-th batch (1-based)."""

    def __init__(self, inner, bad_step: int):
        self.inner, self.bad_step, self.served = inner, bad_step, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        self.served += 1
        if self.served == self.bad_step:
            batch = dict(batch, weights=batch["weights"].copy())
            batch["weights"][0, 0] = np.inf
        return batch

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


@pytest.fixture
def poison_step(monkeypatch):
    """Call with a step number to poison that step's batch in the next trainer.train."""

    def poison(bad_step: int) -> None:
        make = experiment.make_train_iterator
        monkeypatch.setattr(
            trainer, "make_train_iterator", lambda exp: _PoisonedIterator(make(exp), bad_step)
        )

    return poison


def _steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def test_stop_policy_names_the_step_and_keeps_the_last_good_checkpoint(
    corpus_dir, tmp_path, poison_step
):
    workdir = str(tmp_path / "run")
    poison_step(4)
    # Logged every 3 steps: step 4's loss is only fetched by the check before the save at 4.
    cfg = corpus_config(
        corpus_dir, **{"train.steps": 8, "train.checkpoint_every": 2, "train.log_every": 3}
    )
    with pytest.raises(nan_guard.NonFiniteError) as info:
        trainer.train(cfg, workdir)
    message = str(info.value)
    assert isinstance(info.value, FloatingPointError)
    assert message.startswith("Step 4: non-finite training step (loss nan")
    assert "train.nan_policy='stop'" in message and "was not saved" in message
    assert f"training resumes from step 2 ({workdir}/checkpoints/2)" in message
    assert _steps(workdir) == [2]  # Nothing saved at or after the bad step.
    assert sorted(read_metrics(workdir, "train")) == [3]


def test_skip_policy_leaves_params_unchanged_on_the_bad_step(corpus_dir, tmp_path, poison_step):
    workdir = str(tmp_path / "run")
    poison_step(4)
    settings = {"train.steps": 6, "train.checkpoint_every": 1, "train.max_to_keep": 10}
    cfg = corpus_config(corpus_dir, **settings, **{"train.nan_policy": "skip"})
    result = trainer.train(cfg, workdir)
    assert "stopped" not in result and _steps(workdir) == [1, 2, 3, 4, 5, 6]

    exp = experiment.build_experiment(cfg)
    abstract, _ = experiment.state_shardings(exp)
    reader = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    params = {s: jax.device_get(reader.restore(s, abstract).params) for s in (3, 4, 5)}
    skipped = {s: int(reader.restore(s, abstract).opt_state.total_notfinite) for s in (3, 4, 6)}
    reader.close()
    same = jax.tree.map(np.array_equal, params[3], params[4])
    assert all(jax.tree.leaves(same))  # The update of step 4 was skipped...
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params[4], params[5])
    assert all(jax.tree.leaves(changed))  # ...and step 5 trained again.
    assert skipped == {3: 0, 4: 1, 6: 1}

    train = read_metrics(workdir, "train")
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    assert "loss" not in train[4] and train[4]["skipped_updates"] == 1  # Nothing finite to log.
    assert all(np.isfinite(train[s]["loss"]) for s in (1, 2, 3, 5, 6))
    assert train[6]["skipped_updates"] == 1


def test_skip_policy_gives_up_after_too_many_consecutive_bad_steps():
    guard = nan_guard.NanGuard("skip", max_consecutive=2)
    good, bad = {"loss_sum": 1.0, "grad_norm": 1.0}, {"loss_sum": np.nan, "grad_norm": np.inf}
    assert guard.check([(1, good), (2, bad), (3, good), (4, bad)], "hint") == [2, 4]
    assert guard.check([(4, bad), (5, bad)], "hint") == [5]  # Step 4 is not counted twice.
    with pytest.raises(nan_guard.NonFiniteError, match=r"^Steps 4\.\.6: 3 consecutive non-fin"):
        guard.check([(6, bad)], "relaunch hint")
