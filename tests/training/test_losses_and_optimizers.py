"""Loss arithmetic (z-loss, label smoothing, normalisation) and optimizer schedules."""

import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from t5x_like.training import losses, optimizers


def test_cross_entropy_and_z_loss_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(2, 3))
    total, ce, z = losses.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 1e-2)
    log_z = np.log(np.exp(logits).sum(-1))
    expected_ce = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(ce, expected_ce, rtol=1e-5)
    np.testing.assert_allclose(z, 1e-2 * log_z**2, rtol=1e-5)
    np.testing.assert_allclose(total, expected_ce + 1e-2 * log_z**2, rtol=1e-5)


def test_label_smoothing_is_zero_for_the_smoothed_optimum():
    vocab, eps = 4, 0.1
    probs = np.full(vocab, eps / (vocab - 1))
    probs[2] = 1 - eps
    logits = jnp.log(jnp.asarray(probs))[None, None]
    _, ce, _ = losses.token_cross_entropy(logits, jnp.array([[2]]), label_smoothing=eps)
    np.testing.assert_allclose(ce, 0.0, atol=1e-6)
    _, ce_other, _ = losses.token_cross_entropy(logits, jnp.array([[0]]), label_smoothing=eps)
    assert float(ce_other[0, 0]) > 1.0


def test_loss_is_normalised_by_non_padding_tokens():
    logits = jnp.zeros((1, 4, 8))
    targets = jnp.array([[1, 2, 3, 0]])
    weights = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    sums = losses.loss_sums(logits, targets, weights)
    assert float(sums["weight_sum"]) == 3.0
    summary = losses.summarize({k: float(v) for k, v in sums.items()})
    np.testing.assert_allclose(summary["loss"], np.log(8), rtol=1e-6)
    np.testing.assert_allclose(summary["perplexity"], 8.0, rtol=1e-5)


def _opt(**kw):
    cfg = ConfigDict(
        dict(
            name="adamw",
            learning_rate=1.0,
            schedule="cosine",
            warmup_steps=10,
            end_lr_fraction=0.1,
            weight_decay=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            grad_clip_norm=1.0,
        )
    )
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize(
    "schedule, checks",
    [
        ("cosine", {0: 0.0, 5: 0.5, 10: 1.0, 100: 0.1}),
        ("rsqrt", {0: 0.0, 10: 1.0, 40: 0.5}),
        ("constant", {5: 0.5, 10: 1.0, 1000: 1.0}),
    ],
)
def test_schedules_warm_up_then_decay(schedule, checks):
    fn = optimizers.make_schedule(_opt(schedule=schedule), total_steps=100)
    for step, value in checks.items():
        np.testing.assert_allclose(float(fn(step)), value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd"])
def test_optimizers_reduce_a_quadratic(name):
    tx, _ = optimizers.make_optimizer(
        _opt(name=name, schedule="constant", warmup_steps=0, learning_rate=0.1), 100
    )
    params = {"w": jnp.full((4, 4), 3.0), "b": jnp.full((4,), 3.0)}
    state = tx.init(params)
    start = sum(float(jnp.sum(p**2)) for p in params.values())
    for _ in range(20):
        grads = {k: 2 * v for k, v in params.items()}
        updates, state = tx.update(grads, state, params)
        params = {k: params[k] + updates[k] for k in params}
    assert sum(float(jnp.sum(p**2)) for p in params.values()) < 0.8 * start
