"""Layer building blocks: masks, RoPE, positions, dense kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.layers.attention import make_attention_mask
from t5x_like.layers.embeddings import apply_rope, sinusoidal_positions
from t5x_like.layers.linear import DenseGeneral


def test_mask_blocks_other_segments_padding_and_future():
    seg = jnp.array([[1, 1, 2, 2, 0]])
    mask = np.asarray(make_attention_mask(seg, seg, causal=True))[0, 0]
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(mask, expected)
    bidirectional = np.asarray(make_attention_mask(seg, seg, causal=False))[0, 0]
    assert bidirectional[0, 1] and bidirectional[2, 3] and not bidirectional[1, 2]


def test_rope_is_a_rotation_that_depends_only_on_relative_position():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)

    def score(pq, pk):
        rq = apply_rope(q, jnp.array([[pq]]), 10_000.0)
        rk = apply_rope(k, jnp.array([[pk]]), 10_000.0)
        return float(jnp.sum(rq * rk))

    np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)
    np.testing.assert_allclose(
        jnp.linalg.norm(apply_rope(q, jnp.array([[5]]), 1e4)), jnp.linalg.norm(q), rtol=1e-6
    )
    np.testing.assert_allclose(apply_rope(q, jnp.array([[0]]), 1e4), q)


def test_sinusoidal_positions_values():
    enc = np.asarray(sinusoidal_positions(jnp.array([[0, 1]]), 4))
    np.testing.assert_allclose(enc[0, 0], [0, 0, 1, 1], atol=1e-7)
    np.testing.assert_allclose(
        enc[0, 1], [np.sin(1), np.sin(1e-4), np.cos(1), np.cos(1e-4)], rtol=1e-5
    )


def test_dense_general_multi_axis_kernel_and_fan_in_scale():
    layer = DenseGeneral(features=(4, 16), kernel_axes=("embed", "heads", "kv"))
    x = jnp.ones((2, 3, 256))
    variables = layer.init(jax.random.PRNGKey(0), x)
    kernel = variables["params"]["kernel"]
    assert kernel.value.shape == (256, 4, 16)
    assert kernel.names == ("embed", "heads", "kv")
    # Fan-in over the 256 input features: std ~ 1/sqrt(256).
    np.testing.assert_allclose(np.std(kernel.value), 1 / 16, rtol=0.1)
    y = layer.apply(variables, x)
    assert y.shape == (2, 3, 4, 16)


@pytest.mark.parametrize(
    "features,axis,kernel_axes",
    [
        ((4, 16), -1, ("embed", "heads", "kv")),  # Q/K/V projections: trailing axis.
        (32, (-2, -1), ("heads", "kv", "embed")),  # Output projection: two trailing axes.
        (32, (1,), ("embed", "mlp")),  # A non-trailing axis: the general dot.
    ],
)
def test_dense_general_equals_the_tensordot_of_its_axes(features, axis, kernel_axes):
    """The 2-D matmul the layer flattens trailing contractions into changes nothing."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 16) if axis != (1,) else (2, 8, 5))
    layer = DenseGeneral(features=features, kernel_axes=kernel_axes, axis=axis)
    variables = layer.init(jax.random.PRNGKey(0), x)
    kernel = np.asarray(variables["params"]["kernel"].value, np.float64)
    axes = [a % x.ndim for a in ((axis,) if isinstance(axis, int) else axis)]
    expected = np.tensordot(np.asarray(x, np.float64), kernel, axes=(axes, list(range(len(axes)))))
    y = layer.apply(variables, x)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda v: jnp.sum(layer.apply(v, x) ** 2))(variables)["params"]["kernel"]
    assert grad.value.shape == kernel.shape
