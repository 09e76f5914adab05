"""Checkpoint integrity: checksums verified at every restore, no non-finite state ever saved."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import pytest
from testutil import corpus_config

from t5x_like import checkpointing, checksums
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training.nan_guard import NonFiniteError
from t5x_like.training.train_state import TrainState


def test_checksum_is_the_same_on_any_mesh_and_changes_with_any_element():
    x = jnp.arange(8 * 24, dtype=jnp.float32).reshape(8, 24) / 7
    mesh = jax.make_mesh((8,), ("d",))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
    base, _ = checksums.state_checksums({"x": x})
    assert checksums.state_checksums({"x": sharded})[0] == base
    changed = x.at[3, 5].set(jnp.nextafter(x[3, 5], 1e9))  # One ulp of one element.
    swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
    for other in (changed, swapped):
        assert checksums.state_checksums({"x": other})[0] != base
    # Every dtype a state holds: 16-bit floats, ints, bools, 64-bit and PRNG keys.
    tree = {
        "bf16": x.astype(jnp.bfloat16),
        "i32": jnp.arange(5),
        "flag": jnp.array([True, False]),
        "u8": jnp.arange(3, dtype=jnp.uint8),
        "key": jax.random.key(0),
        "raw_key": jax.random.PRNGKey(1),
    }
    sums, bad = checksums.state_checksums(tree)
    assert set(sums) == set(tree) and bad == []
    assert all(0 <= v < 2**32 for v in sums.values())


def test_non_finite_arrays_are_named():
    tree = {"a": {"w": jnp.array([1.0, jnp.nan])}, "b": jnp.array([jnp.inf]), "c": jnp.ones(2)}
    assert checksums.state_checksums(tree)[1] == ["a/w", "b"]


def test_mismatches_compare_only_saved_names():
    assert checksums.mismatches({"a": 1, "b": 2}, {"a": 1, "b": 3, "new": 9}) == ["b"]
    assert checksums.json_checksum({"b": 1, "a": [1, 2]}) == checksums.json_checksum(
        json.loads('{"a": [1, 2], "b": 1}')
    )


def _state(value: float) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"w": jnp.full((4, 4), value)},
        opt_state={"mu": jnp.zeros((4, 4))},
        rng=jax.random.PRNGKey(0),
    )


@pytest.mark.parametrize("policy_value", [jnp.nan, jnp.inf])
def test_a_non_finite_state_is_never_saved(tmp_path, policy_value):
    directory = str(tmp_path / "checkpoints")
    checkpointer = checkpointing.Checkpointer(directory, async_save=True)
    assert checkpointer.save(1, _state(1.0))
    checkpointer.wait_until_finished()
    with pytest.raises(NonFiniteError) as info:
        checkpointer.save(2, _state(policy_value))
    checkpointer.close()
    assert str(info.value) == (
        "Step 2: the state to be checkpointed holds NaN or Inf (params/w), so it was not saved. "
        "Lower optimizer.learning_rate (or check the optimizer settings) and relaunch: training "
        "resumes from step 1."
    )
    assert sorted(os.listdir(directory)) == ["1"]


def test_each_checkpoint_carries_checksums(tmp_path):
    directory = str(tmp_path / "checkpoints")
    checkpointer = checkpointing.Checkpointer(directory, async_save=False)
    checkpointer.save(3, _state(2.0))
    restored = checkpointer.restore(3, _abstract(_state(0.0)))
    checkpointer.close()
    assert float(restored.params["w"][0, 0]) == 2.0
    assert os.path.isdir(os.path.join(directory, "3", "integrity"))


def _abstract(state):
    return checkpointing.abstract_like(state, jax.tree.map(lambda x: x.sharding, state))


@pytest.fixture(scope="module")
def trained(corpus_dir, tmp_path_factory):
    """A real run with checkpoints 4, 6 and 8 (and its abstract state)."""
    workdir = str(tmp_path_factory.mktemp("integrity") / "run")
    cfg = corpus_config(corpus_dir, **{"train.steps": 8, "train.checkpoint_every": 2})
    trainer.train(cfg, workdir)
    exp = experiment.build_experiment(cfg)
    return workdir, experiment.state_shardings(exp)[0]


def test_changed_iterator_state_is_caught(trained, tmp_path, caplog):
    directory = os.path.join(str(tmp_path / "run"), "checkpoints")
    shutil.copytree(os.path.join(trained[0], "checkpoints"), directory)
    path = os.path.join(directory, "8", "data_iterator", "metadata")
    assert os.path.exists(path), os.listdir(os.path.dirname(path))
    saved = json.load(open(path))
    key = next(k for k, v in _walk(saved) if isinstance(v, int) and not isinstance(v, bool))
    _set(saved, key, _get(saved, key) + 1)
    json.dump(saved, open(path, "w"))
    checkpointer = checkpointing.Checkpointer(directory, read_only=True)
    with pytest.raises(checkpointing.CorruptCheckpointError, match="data_iterator differ"):
        checkpointer.restore(8, trained[1], _FakeIterator())
    checkpointer.close()


class _FakeIterator:
    def set_state(self, state):
        self.state = state


def _walk(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _walk(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _walk(v, (*prefix, i))
    else:
        yield prefix, tree


def _get(tree, key):
    for k in key:
        tree = tree[k]
    return tree


def _set(tree, key, value):
    _get(tree, key[:-1])[key[-1]] = value
