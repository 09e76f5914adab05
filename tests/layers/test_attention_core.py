"""attention.dot_product_attention computes what jax.nn.dot_product_attention computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.layers import attention


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

    ours = lambda q, k, v: attention.dot_product_attention(q, k, v, mask, bias, scale)  # noqa: E731
    ref = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
        q, k, v, bias=bias, mask=mask, scale=scale
    )
    np.testing.assert_allclose(ours(q, k, v), ref(q, k, v), rtol=1e-6, atol=1e-6)
    grads = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))
