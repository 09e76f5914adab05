"""Gradient accumulation: splitting the batch into micro-batches gives the large-batch step."""

import jax
import numpy as np
import pytest
from testutil import synthetic_batch, synthetic_encdec_batch, tiny_config, tiny_t5_config

from t5x_like import partitioning
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.training import steps


def _sgd(cfg, microbatches, batch_size=8, **mesh):
    """`cfg` with plain SGD (so updates are linear in the gradients) and the given mesh."""
    cfg.train.update(microbatches=microbatches, batch_size=batch_size)
    cfg.optimizer.update(name="sgd", schedule="constant", warmup_steps=0, learning_rate=0.5)
    cfg.optimizer.grad_clip_norm = 0.0
    cfg.mesh.update(**(mesh or dict(data=1, fsdp=1, tensor=1)))
    return cfg


def _close(actual, expected, what, rtol=1e-6):
    """Equal within `rtol` of each leaf's largest magnitude (the summation order differs)."""
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual), strict=True
    ):
        a, b = np.asarray(a), np.asarray(b)
        scale = float(np.abs(a).max())
        np.testing.assert_allclose(
            b, a, rtol=rtol, atol=rtol * scale, err_msg=f"{what} {jax.tree_util.keystr(path)}"
        )


def _grads(make_config, batch, microbatches, dropout_rngs=(0,), **overrides):
    """Loss sums and gradients with 1 and with `microbatches` micro-batches, from one init;
    with several `dropout_rngs`, the micro-batched ones for each of those seeds."""
    cfg = _sgd(make_config(**overrides), microbatches)
    exp = experiment.assemble_experiment(cfg, devices=jax.devices()[:1])
    _, shardings = experiment.state_shardings(exp)
    params = experiment.init_state(exp, shardings).params
    results = []
    with partitioning.activate(exp.mesh, exp.rules):
        global_batch = partitioning.global_batch(batch, exp.batch_sharding)
        for micro in (1, microbatches):
            loss_cfg = steps.LossConfig(exp.model, z_loss=cfg.train.z_loss, microbatches=micro)
            fn = jax.jit(steps.loss_and_grads, static_argnums=3)
            for seed in dropout_rngs if micro > 1 else dropout_rngs[:1]:
                key = jax.random.key(seed)
                results.append(jax.device_get(fn(params, global_batch, key, loss_cfg)))
    return results


def _compare_grads(make_config, batch):
    (sums1, grads1), (sums4, grads4) = _grads(make_config, batch, 4)
    assert sums4["weight_sum"] == sums1["weight_sum"] == batch["weights"].sum()
    for key in ("loss_sum", "cross_entropy_sum", "z_loss_sum"):
        np.testing.assert_allclose(sums4[key], sums1[key], rtol=1e-6)
    # A gradient is a sum over every token of the batch, added in another order when split:
    # float32 rounding reaches a few 1e-6 of the leaf's scale; a wrong split would be O(1).
    _close(grads4, grads1, "grad", rtol=1e-5)
    norm = float(np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads1))))
    assert norm > 1e-2  # Non-trivial gradients were compared.


def test_decoder_only_microbatch_grads_equal_large_batch():
    _compare_grads(tiny_config, synthetic_batch(8, 16, 128, seed=1))


def test_encoder_decoder_microbatch_grads_equal_large_batch():
    _compare_grads(tiny_t5_config, synthetic_encdec_batch(8, 16, 8, 128, seed=2))


def _train_step(cfg, batch):
    """(params after one jitted train step, its metrics) on all 8 devices."""
    exp = experiment.assemble_experiment(cfg)
    _, shardings = experiment.state_shardings(exp)
    state = experiment.init_state(exp, shardings)
    jit_train, _ = experiment.jit_steps(exp, shardings)
    with partitioning.activate(exp.mesh, exp.rules):
        state, metrics = jit_train(state, partitioning.global_batch(batch, exp.batch_sharding))
    return jax.device_get(state.params), jax.device_get(metrics)


def test_microbatched_train_step_on_a_sharded_mesh_equals_large_batch():
    """(data=2, fsdp=2, tensor=2): the jitted train step with 16 rows in 4 micro-batches (one
    row per batch shard each) updates the params as the 16-row step does."""
    batch = synthetic_batch(16, 16, 128, seed=3)
    mesh = dict(data=2, fsdp=2, tensor=2)
    params1, metrics1 = _train_step(_sgd(tiny_config(), 1, 16, **mesh), batch)
    params4, metrics4 = _train_step(_sgd(tiny_config(), 4, 16, **mesh), batch)
    assert metrics4["weight_sum"] == metrics1["weight_sum"] == batch["weights"].sum()
    np.testing.assert_allclose(metrics4["loss_sum"], metrics1["loss_sum"], rtol=1e-6)
    np.testing.assert_allclose(metrics4["grad_norm"], metrics1["grad_norm"], rtol=1e-6)
    assert float(metrics1["grad_norm"]) > 1e-2
    _close(params4, params1, "param")


def test_dropout_per_microbatch_is_deterministic():
    """With dropout, micro-batched gradients depend on the dropout key alone: the same key gives
    identical results, another key other masks."""
    batch = synthetic_batch(8, 16, 128, seed=4)
    _, first, second, other = _grads(
        tiny_config, batch, 4, dropout_rngs=(0, 0, 1), **{"model.dropout_rate": 0.3}
    )
    assert first[0]["loss_sum"] == second[0]["loss_sum"]
    for a, b in zip(jax.tree.leaves(first[1]), jax.tree.leaves(second[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert abs(first[0]["loss_sum"] - other[0]["loss_sum"]) > 1e-3


def test_batch_not_divisible_into_microbatches_is_a_config_error():
    cfg = _sgd(tiny_config(), 3)
    with pytest.raises(ConfigError, match=r"train.microbatches=3.*multiple of 3"):
        experiment.assemble_experiment(cfg, devices=jax.devices()[:1])
    cfg = _sgd(tiny_config(), 2, 8, data=4, fsdp=2, tensor=1)  # 8 rows, 2 x 8 shards.
    with pytest.raises(ConfigError, match=r"multiple of 16, or fewer microbatches"):
        experiment.assemble_experiment(cfg)
