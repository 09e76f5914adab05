"""xla_cpu.dot_product_attention computes what jax.nn.dot_product_attention computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.layers import attention, xla_cpu


@pytest.mark.parametrize(
    "kv_heads,with_bias,scale", [(4, False, None), (2, True, 1.0), (1, True, None)]
)
def test_matches_jax_dot_product_attention_values_and_gradients(kv_heads, with_bias, scale):
    b, t, s, heads, d = 2, 5, 7, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    q = jax.random.normal(keys[0], (b, t, heads, d))
    k = jax.random.normal(keys[1], (b, s, kv_heads, d))
    v = jax.random.normal(keys[2], (b, s, kv_heads, d))
    bias = jax.random.normal(keys[3], (1, heads, t, s)) if with_bias else None
    mask = jax.random.bernoulli(keys[4], 0.7, (b, 1, t, s))
    mask = mask.at[0, 0, 1].set(False)  # A fully masked query row (padding).
    cotangent = jax.random.normal(keys[0], (b, t, heads, d))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)

    ours = lambda q, k, v: xla_cpu.dot_product_attention(q, k, v, mask, bias, scale)  # noqa: E731
    ref = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
        q, k, v, bias=bias, mask=mask, scale=scale
    )
    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-6, atol=1e-6)
    grads = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


def _packed_causal_mask(b: int, t: int) -> jax.Array:
    """Two documents per row (the second row's split elsewhere), causal within each."""
    segments = np.ones((b, t), np.int32)
    segments[0, t // 3 :] = 2
    segments[1, t // 2 + 5 :] = 2
    segments[1, -4:] = 0  # Padding.
    seg = jnp.asarray(segments)
    return attention.make_attention_mask(seg, seg, causal=True)


@pytest.mark.parametrize("kv_heads,with_bias", [(4, False), (2, True)])
def test_causal_halves_equal_the_full_causal_attention(kv_heads, with_bias):
    b, t, heads, d = 2, xla_cpu.MIN_CAUSAL_SPLIT, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    q = jax.random.normal(keys[0], (b, t, heads, d))
    k = jax.random.normal(keys[1], (b, t, kv_heads, d))
    v = jax.random.normal(keys[2], (b, t, kv_heads, d))
    bias = jax.random.normal(keys[3], (1, heads, t, t)) if with_bias else None
    mask = _packed_causal_mask(b, t)
    cotangent = jax.random.normal(keys[4], (b, t, heads, d))

    def run(causal):
        fn = lambda q, k, v: xla_cpu.dot_product_attention(  # noqa: E731
            q, k, v, mask, bias, causal=causal
        )
        grads = jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)
        return fn(q, k, v), grads

    out, grads = run(True)
    ref = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    _, ref_grads = run(False)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


def test_causal_attention_skips_the_masked_quarter_of_the_flops():
    b, t, heads, d = 2, 256, 4, 16
    q = jnp.ones((b, t, heads, d))
    mask = _packed_causal_mask(b, t)

    def flops(causal):
        fn = jax.jit(lambda q: xla_cpu.dot_product_attention(q, q, q, mask, causal=causal))
        return fn.lower(q).compile().cost_analysis()["flops"]

    full = 2 * 2 * b * heads * t * t * d  # Logits and output, every query x key.
    assert flops(False) >= full
    assert flops(True) < 0.8 * flops(False)
    assert flops(True) >= 0.75 * full
