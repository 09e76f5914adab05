"""Mixed precision: bf16 compute with f32 params, gradients, optimizer state and loss."""

import jax
import jax.numpy as jnp
import numpy as np
from testutil import synthetic_batch, tiny_config

from t5x_like import models, partitioning
from t5x_like.experiment import assembly as experiment
from t5x_like.training import steps


def _setup(dtype):
    cfg = tiny_config(**{"model.dtype": dtype, "model.param_dtype": "float32"})
    cfg.optimizer.update(schedule="constant", warmup_steps=0, learning_rate=1e-2)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    exp = experiment.assemble_experiment(cfg)
    _, shardings = experiment.state_shardings(exp)
    return exp, shardings, experiment.init_state(exp, shardings)


def _float_dtypes(tree):
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bf16_compute_keeps_params_grads_opt_state_and_loss_in_f32():
    batch = synthetic_batch(8, 16, 128, seed=5)
    exp32, shardings32, state32 = _setup("float32")
    exp, shardings, state = _setup("bfloat16")
    with partitioning.activate(exp.mesh, exp.rules):
        global_batch = partitioning.global_batch(batch, exp.batch_sharding)
        logits = jax.jit(lambda p, b: models.forward(exp.model, p, b))(state.params, global_batch)
        assert logits.dtype == jnp.bfloat16  # The model really computes in bf16.
        loss_cfg = steps.LossConfig(exp.model, z_loss=exp.cfg.train.z_loss)
        loss_and_grads = jax.jit(steps.loss_and_grads, static_argnums=3)
        sums, grads = loss_and_grads(state.params, global_batch, jax.random.key(0), loss_cfg)
        assert {v.dtype for v in sums.values()} == {jnp.dtype(jnp.float32)}
        assert _float_dtypes(grads) == {jnp.dtype(jnp.float32)}

        jit_train, _ = experiment.jit_steps(exp, shardings)
        losses = []
        for _ in range(6):
            state, metrics = jit_train(state, global_batch)
            assert metrics["loss_sum"].dtype == jnp.float32
            losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    assert _float_dtypes(state.params) == {jnp.dtype(jnp.float32)}
    assert _float_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}
    assert losses[-1] < losses[0] - 0.1  # Training on the fixed batch reduces the loss.

    # Same init (f32 params from the same seed): the bf16 loss is the f32 one within bf16 error.
    with partitioning.activate(exp32.mesh, exp32.rules):
        jit_train32, _ = experiment.jit_steps(exp32, shardings32)
        _, metrics32 = jit_train32(state32, partitioning.global_batch(batch, exp.batch_sharding))
    loss32 = float(metrics32["loss_sum"] / metrics32["weight_sum"])
    np.testing.assert_allclose(losses[0], loss32, rtol=2e-2)
    assert losses[0] != loss32  # bf16 compute really differs from f32.
