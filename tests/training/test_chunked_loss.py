"""The fused, chunked LM head + loss (train.loss_chunk_size) gives the plain loss's sums and
gradients: on its own, inside both model families' train and eval steps, with padding chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import synthetic_batch, synthetic_encdec_batch, tiny_config, tiny_t5_config

from t5x_like import config as config_lib
from t5x_like import models, partitioning
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import validation
from t5x_like.layers import xla_cpu
from t5x_like.training import chunked_loss, losses, steps

RTOL = 1e-6


def _close(actual, expected, what):
    """Equal within RTOL of each leaf's largest magnitude (the summation order differs)."""
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual), strict=True
    ):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.abs(a).max()), 1e-30)
        np.testing.assert_allclose(
            b, a, rtol=RTOL, atol=RTOL * scale, err_msg=f"{what} {jax.tree_util.keystr(path)}"
        )


def _head_inputs(vocab_major, seed=0, batch=3, length=10, d=16, vocab=40):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(batch, length, d)), jnp.float32)
    shape = (vocab, d) if vocab_major else (d, vocab)
    weight = jnp.asarray(rng.normal(size=shape), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, size=(batch, length)), jnp.int32)
    weights = jnp.asarray(rng.random((batch, length)) > 0.2, jnp.float32)  # Some padding.
    return hidden, weight, targets, weights


@pytest.mark.parametrize(
    "vocab_major,z_loss,label_smoothing,chunk",
    [
        (True, 1e-2, 0.0, 4),  # 10 positions: 3 chunks, the last one padded.
        (True, 0.0, 0.1, 5),
        (False, 1e-2, 0.1, 3),
        (False, 0.0, 0.0, 64),  # One chunk longer than the rows.
    ],
)
def test_chunked_loss_matches_plain_loss_and_gradients(vocab_major, z_loss, label_smoothing, chunk):
    hidden, weight, targets, weights = _head_inputs(vocab_major)
    spec = "bld,vd->blv" if vocab_major else "bld,dv->blv"

    def plain(h, w):
        sums = losses.loss_sums(jnp.einsum(spec, h, w), targets, weights, z_loss, label_smoothing)
        return sums["loss_sum"] / sums["weight_sum"], sums

    def chunked(h, w):
        head = models.LMHead(w, vocab_major)
        sums = chunked_loss.chunked_loss_sums(
            h, head, targets, weights, chunk, z_loss, label_smoothing
        )
        return sums["loss_sum"] / sums["weight_sum"], sums

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))  # noqa: E731
    (_, plain_sums), plain_grads = grad(plain)(hidden, weight)
    (_, sums), grads = grad(chunked)(hidden, weight)
    assert set(sums) == set(plain_sums)
    assert float(plain_sums["loss_sum"]) > 0 and float(jnp.abs(plain_grads[1]).max()) > 0
    _close(sums, plain_sums, "sums")
    _close(grads, plain_grads, "grads")
    # Without differentiation (eval) the primal path gives the same sums.
    _close(jax.jit(chunked)(hidden, weight)[1], plain_sums, "primal sums")


def test_only_the_loss_sum_carries_a_gradient():
    hidden, weight, targets, weights = _head_inputs(True)
    head = lambda w: models.LMHead(w, True)  # noqa: E731
    ce = jax.grad(
        lambda h: chunked_loss.chunked_loss_sums(h, head(weight), targets, weights, 4)[
            "cross_entropy_sum"
        ]
    )(hidden)
    assert float(jnp.abs(ce).max()) == 0.0
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_loss.chunked_loss_sums(hidden, head(weight), targets, weights, 0)


def _sums_and_grads(cfg, batch, chunk):
    exp = experiment.assemble_experiment(cfg, devices=jax.devices()[:1])
    _, shardings = experiment.state_shardings(exp)
    params = experiment.init_state(exp, shardings).params
    with partitioning.activate(exp.mesh, exp.rules):
        global_batch = partitioning.global_batch(batch, exp.batch_sharding)
        train_cfg = steps.LossConfig(
            exp.model, z_loss=cfg.train.z_loss, label_smoothing=0.1, loss_chunk_size=chunk
        )
        loss_and_grads = jax.jit(steps.loss_and_grads, static_argnums=3)
        sums, grads = loss_and_grads(params, global_batch, jax.random.key(0), train_cfg)
        eval_cfg = steps.LossConfig(exp.model, rules=exp.rules, z_loss=1e-3, loss_chunk_size=chunk)
        eval_sums = jax.jit(steps.eval_step, static_argnums=2)(params, global_batch, eval_cfg)
    return jax.device_get((sums, grads, eval_sums))


# Both families and both head layouts (the tied table and the untied `logits` kernel).
@pytest.mark.parametrize("family,tied", [("decoder_only", True), ("t5", False)])
def test_train_and_eval_steps_match_with_chunked_loss(family, tied):
    if family == "t5":
        make = lambda: tiny_t5_config(**{"model.tie_embeddings": tied})  # noqa: E731
        batch = synthetic_encdec_batch(8, 16, 8, 128, seed=1)
    else:
        make = lambda: tiny_config(**{"model.tie_embeddings": tied})  # noqa: E731
        batch = synthetic_batch(8, 16, 128, seed=1)
    plain = _sums_and_grads(make(), batch, 0)
    chunked = _sums_and_grads(make(), batch, 3)  # Decoder rows of 16 / 8: a padded chunk.
    _close(chunked, plain, f"{family} tied={tied}")


def test_config_rejects_a_negative_chunk_size():
    cfg = tiny_config(**{"train.loss_chunk_size": -1})
    with pytest.raises(config_lib.ConfigError, match="train.loss_chunk_size"):
        validation.validate_config(cfg, 1, 1)


def test_config_refuses_final_logit_softcap_with_a_chunked_loss():
    """The chunked head + loss never builds the full logits a soft-cap needs: refused at
    config time, not when the model is traced."""
    cfg = tiny_config(**{"train.loss_chunk_size": 64, "model.final_logit_softcap": 30.0})
    with pytest.raises(config_lib.ConfigError, match="train.loss_chunk_size=0"):
        validation.validate_config(cfg, 1, 1)
    cfg.train.loss_chunk_size = 0
    validation.validate_config(cfg, 1, 1)


def test_first_argmax_is_argmax_with_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 33)).astype(np.float32)
    x[0, 0] = 0.0  # All tied: index 0.
    x[1, 2, [5, 9, 30]] = 10.0  # Tied maxima: the first.
    x = jnp.asarray(x)
    np.testing.assert_array_equal(xla_cpu.first_argmax(x), jnp.argmax(x, axis=-1))
    np.testing.assert_array_equal(
        xla_cpu.first_argmax(x.astype(jnp.bfloat16)), jnp.argmax(x.astype(jnp.bfloat16), axis=-1)
    )
