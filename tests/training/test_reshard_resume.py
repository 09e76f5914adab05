"""A checkpoint saved on one mesh resumes training on another mesh (and restores on 1 device)."""

import os

import jax
import numpy as np
from testutil import tiny_config

from t5x_like import checkpointing
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training.metrics_writer import read_metrics

MESH_A = dict(data=2, fsdp=2, tensor=2)
MESH_B = dict(data=1, fsdp=8, tensor=1)


def _config(data_dir, mesh, steps):
    cfg = tiny_config()
    cfg.model.vocab_size = None
    cfg.data.data_dir = data_dir
    cfg.data.vocab_size = 256
    # A schedule that does not depend on train.steps, so a 2-step run is a prefix of a 4-step one.
    cfg.optimizer.update(schedule="constant", warmup_steps=1)
    cfg.train.update(steps=steps, checkpoint_every=2, eval_every=0, async_checkpoint=False)
    cfg.mesh.update(**mesh)
    return cfg


def _restore(workdir, cfg, step, devices=None):
    """(state of checkpoint `step` restored onto cfg's mesh over `devices`, target shardings)."""
    exp = experiment.assemble_experiment(cfg, devices=devices)
    abstract, shardings = experiment.state_shardings(exp)
    reader = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        return reader.restore(step, abstract), shardings
    finally:
        reader.close()


def test_resume_on_another_mesh_continues_the_run(corpus_dir, tmp_path):
    full, resharded = str(tmp_path / "full"), str(tmp_path / "resharded")
    trainer.train(_config(corpus_dir, MESH_A, 4), full)
    trainer.train(_config(corpus_dir, MESH_A, 2), resharded)
    result = trainer.train(_config(corpus_dir, MESH_B, 4), resharded)
    assert result["start_step"] == 2

    expected, resumed = read_metrics(full, "train"), read_metrics(resharded, "train")
    assert sorted(resumed) == sorted(expected) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        np.testing.assert_allclose(resumed[step]["loss"], expected[step]["loss"], rtol=1e-5)
    assert expected[4]["loss"] != expected[2]["loss"]  # Training moved between the steps.

    # Checkpoint 2 (written on mesh A) lands on mesh B's shardings, and on one device, with
    # the same values as on mesh A.
    cfg_b = _config(corpus_dir, MESH_B, 4)
    cfg_b.model.vocab_size = 256  # As resolved from the vocabulary in config.json.
    state_b, shardings_b = _restore(resharded, cfg_b, 2)
    cfg_a = _config(corpus_dir, MESH_A, 4)
    cfg_a.model.vocab_size = 256
    state_a, _ = _restore(resharded, cfg_a, 2)
    cfg_1 = _config(corpus_dir, dict(data=1, fsdp=1, tensor=1), 4)
    cfg_1.model.vocab_size = 256
    state_1, _ = _restore(resharded, cfg_1, 2, devices=jax.devices()[:1])
    for array, sharding in zip(jax.tree.leaves(state_b), jax.tree.leaves(shardings_b), strict=True):
        assert array.sharding.is_equivalent_to(sharding, array.ndim)
        assert dict(array.sharding.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    query = state_b.params["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]
    assert query.sharding.spec[0] == "fsdp"
    assert query.addressable_shards[0].data.shape[0] == query.shape[0] // 8
    assert int(state_b.step) == 2
    for a, b, one in zip(
        jax.tree.leaves(jax.device_get(state_a)),
        jax.tree.leaves(jax.device_get(state_b)),
        jax.tree.leaves(jax.device_get(state_1)),
        strict=True,
    ):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(one, a)
