"""Every XLA:CPU formulation (layers/xla_cpu.py) equals the plain formulation it replaces, in
values and gradients: each on its own, and a whole train step with all of them switched off."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import synthetic_batch, tiny_config

from t5x_like import partitioning
from t5x_like.experiment import assembly as experiment
from t5x_like.layers import attention, xla_cpu
from t5x_like.training import steps

ALL_OFF = xla_cpu.Formulations().without(*xla_cpu.Formulations.names())


def _close(actual, expected, rtol, what=""):
    """Equal within `rtol` of each leaf's largest magnitude."""
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(actual), strict=True
    ):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.abs(a).max()), 1e-30)
        np.testing.assert_allclose(
            b, a, rtol=rtol, atol=rtol * scale, err_msg=f"{what} {jax.tree_util.keystr(path)}"
        )


def _value_and_grads(fn, *args):
    """fn(*args) and the gradients of <fn(*args), a fixed random cotangent> for every arg
    (jitted: traced, so with the switches active, when called)."""

    def value_and_grads(*args):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(jax.random.normal(jax.random.PRNGKey(7), out.shape, out.dtype))

    return jax.jit(value_and_grads)(*args)


# --- The switches ------------------------------------------------------------------------------


def test_switches_default_on_and_using_restores_them():
    assert all(getattr(xla_cpu.active(), name) for name in xla_cpu.Formulations.names())
    off = xla_cpu.Formulations().without("matmul_2d")
    with xla_cpu.using(off):
        assert xla_cpu.active() == off and not off.matmul_2d and off.heads_major
        with xla_cpu.using(ALL_OFF):
            assert xla_cpu.active() == ALL_OFF
        assert xla_cpu.active() == off
    assert xla_cpu.active() == xla_cpu.Formulations()
    with pytest.raises(ValueError, match="matmul2d"):
        xla_cpu.Formulations().without("matmul2d")


def test_switches_are_read_when_tracing_and_change_the_program():
    x, kernel = jnp.ones((4, 6, 8)), jnp.ones((8, 3))
    step = jax.jit(lambda x, k: xla_cpu.trailing_dot(x, k, 1))
    on = step.lower(x, kernel).as_text()
    with xla_cpu.using(ALL_OFF):
        off = step.lower(x, kernel).as_text()
    assert "reshape" in on and "reshape" not in off
    assert step.lower(x, kernel).as_text() == on  # The cached trace was dropped on exit.


# --- Dense layers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape,kernel_shape,n_in", [((3, 5, 8), (8, 6), 1), ((2, 4, 3, 5), (3, 5, 7), 2)]
)
def test_matmul_2d_equals_the_plain_dot_values_and_gradients(x_shape, kernel_shape, n_in):
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    x = jax.random.normal(keys[0], x_shape)
    kernel = jax.random.normal(keys[1], kernel_shape)
    out, grads = _value_and_grads(lambda x, k: xla_cpu.matmul_2d(x, k, n_in), x, kernel)
    ref, ref_grads = _value_and_grads(
        lambda x, k: xla_cpu.plain_trailing_dot(x, k, n_in), x, kernel
    )
    assert out.shape == x_shape[: len(x_shape) - n_in] + kernel_shape[n_in:]
    _close((out, grads), (ref, ref_grads), 1e-6)


# --- The attention core ------------------------------------------------------------------------


def _attention_inputs(kv_heads, with_bias, t, seed=0):
    b, heads, d = 2, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(keys[0], (b, t, heads, d))
    k = jax.random.normal(keys[1], (b, t, kv_heads, d))
    v = jax.random.normal(keys[2], (b, t, kv_heads, d))
    bias = jax.random.normal(keys[3], (1, heads, t, t)) if with_bias else None
    # Two documents per row, causal within each; the second row ends in padding.
    segments = np.ones((b, t), np.int32)
    segments[0, t // 3 :] = 2
    segments[1, t // 2 + 5 :] = 2
    segments[1, -4:] = 0
    seg = jnp.asarray(segments)
    return q, k, v, attention.make_attention_mask(seg, seg, causal=True), bias


# Every pair of switches, over MHA / GQA / MQA, with and without bias and scale (the heads-major
# core without the split over all three: tests/layers/test_attention_core.py).
@pytest.mark.parametrize(
    "heads_major,causal_split,kv_heads,with_bias,scale",
    [
        (True, True, 2, True, None),
        (True, False, 1, True, 1.0),
        (False, True, 4, False, None),
        (False, True, 1, True, 1.0),
        (False, False, 2, True, None),
    ],
)
def test_every_attention_formulation_equals_jax_nn(
    kv_heads, with_bias, scale, heads_major, causal_split
):
    q, k, v, mask, bias = _attention_inputs(kv_heads, with_bias, t=xla_cpu.MIN_CAUSAL_SPLIT)
    switches = [
        name
        for name, on in [("heads_major", heads_major), ("causal_split", causal_split)]
        if not on
    ]
    with xla_cpu.using(xla_cpu.Formulations().without(*switches)):
        out, grads = _value_and_grads(
            lambda q, k, v: xla_cpu.dot_product_attention(q, k, v, mask, bias, scale, causal=True),
            q,
            k,
            v,
        )
    ref, ref_grads = _value_and_grads(
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale),
        q,
        k,
        v,
    )
    _close((out, grads), (ref, ref_grads), 1e-5, f"heads_major={heads_major} split={causal_split}")


def test_causal_split_skips_the_masked_quarter_in_both_layouts():
    q, k, v, mask, _ = _attention_inputs(4, False, t=256)

    def flops(fn, causal):
        jitted = jax.jit(lambda q, k, v: fn(q, k, v, mask, causal=causal))
        return jitted.lower(q, k, v).compile().cost_analysis()["flops"]

    for fn in (xla_cpu.heads_major_attention, xla_cpu.plain_attention):
        assert flops(fn, True) < 0.8 * flops(fn, False), fn.__name__
        with xla_cpu.using(xla_cpu.Formulations().without("causal_split")):
            assert flops(fn, True) == flops(fn, False), fn.__name__


# --- The chunked loss's weight gradient and greedy decoding's argmax ---------------------------


def test_weight_grad_lhs_is_the_transpose_as_a_copy_or_folded():
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    dlogits = jax.random.normal(jax.random.PRNGKey(1), (6, 9))
    grad = jax.jit(lambda x, g: jnp.matmul(xla_cpu.weight_grad_lhs(x), g))
    copied = grad.lower(x, dlogits).as_text()
    with xla_cpu.using(xla_cpu.Formulations().without("weight_grad_copy")):
        folded = grad.lower(x, dlogits).as_text()
        np.testing.assert_array_equal(grad(x, dlogits), x.T @ dlogits)
    assert "optimization_barrier" in copied and "optimization_barrier" not in folded
    np.testing.assert_array_equal(grad(x, dlogits), x.T @ dlogits)


def test_argmax_by_reductions_is_jnp_argmax_with_ties_and_nans():
    x = jnp.asarray([[1.0, 3.0, 3.0, 0.0], [2.0, jnp.nan, 5.0, jnp.nan], [-1.0, -1.0, -1.0, -1.0]])
    expected = jnp.argmax(x, axis=-1)
    np.testing.assert_array_equal(xla_cpu.argmax_by_reductions(x), expected)
    np.testing.assert_array_equal(xla_cpu.argmax(x), expected)
    with xla_cpu.using(xla_cpu.Formulations().without("argmax_reductions")):
        np.testing.assert_array_equal(xla_cpu.argmax(x), expected)
    assert xla_cpu.argmax_by_reductions(x).dtype == expected.dtype == jnp.int32
    random = jax.random.normal(jax.random.PRNGKey(0), (5, 300))
    np.testing.assert_array_equal(xla_cpu.argmax_by_reductions(random), jnp.argmax(random, -1))


# --- All of them in a train step ---------------------------------------------------------------


def _loss_and_grads(formulations):
    # Rows of 128 tokens, so the causal halves apply; loss chunks of 32 positions.
    cfg = tiny_config(**{"data.seq_len": 128, "model.max_len": 128, "model.num_layers": 1})
    exp = experiment.assemble_experiment(cfg, devices=jax.devices()[:1])
    _, shardings = experiment.state_shardings(exp)
    params = experiment.init_state(exp, shardings).params
    batch = synthetic_batch(4, 128, 128, seed=1)
    with xla_cpu.using(formulations), partitioning.activate(exp.mesh, exp.rules):
        global_batch = partitioning.global_batch(batch, exp.batch_sharding)
        loss_cfg = steps.LossConfig(exp.model, z_loss=1e-4, loss_chunk_size=32)
        fn = jax.jit(steps.loss_and_grads, static_argnums=3)
        return jax.device_get(fn(params, global_batch, jax.random.key(0), loss_cfg))


def test_train_step_loss_and_grads_equal_with_every_formulation_off():
    sums, grads = _loss_and_grads(xla_cpu.Formulations())
    plain_sums, plain_grads = _loss_and_grads(ALL_OFF)
    assert float(plain_sums["loss_sum"]) > 0
    _close((sums, grads), (plain_sums, plain_grads), 1e-5, "train step")
