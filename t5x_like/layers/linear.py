"""A DenseGeneral whose kernel is created at its true multi-axis shape with logical names.

flax's DenseGeneral initialises kernels flattened to 2-D and reshapes afterwards; under a mesh
the logical sharding constraint would then meet a 2-D array carrying 3 axis names. Creating the
kernel at its real shape avoids that and makes fan-in explicit.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from t5x_like.layers import xla_cpu
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.initializers import logical_init


def _as_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
    return (x,) if isinstance(x, int) else tuple(x)


class DenseGeneral(nn.Module):
    """y = x . kernel over `axis` of x, producing trailing `features`; kernel [in..., out...]."""

    features: int | Sequence[int]
    kernel_axes: Sequence[str]
    axis: int | Sequence[int] = -1
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = _as_tuple(self.features)
        axis = tuple(a % x.ndim for a in _as_tuple(self.axis))
        n_in = len(axis)
        kernel_shape = tuple(x.shape[a] for a in axis) + features
        if len(self.kernel_axes) != len(kernel_shape):
            raise ValueError(f"kernel_axes {self.kernel_axes} do not match shape {kernel_shape}.")
        init = nn.initializers.variance_scaling(
            self.init_scale,
            "fan_in",
            "truncated_normal",
            in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, len(kernel_shape))),
        )
        kernel = self.param(
            "kernel", logical_init(init, self.kernel_axes), kernel_shape, self.param_dtype
        )
        kernel = jnp.asarray(kernel, self.dtype)
        x = jnp.asarray(x, self.dtype)
        if axis == tuple(range(x.ndim - n_in, x.ndim)):
            y = xla_cpu.trailing_dot(x, kernel, n_in)  # 2-D on XLA:CPU: see xla_cpu.matmul_2d.
        else:
            y = lax.dot_general(x, kernel, ((axis, tuple(range(n_in))), ((), ())))
        if self.use_bias:
            bias = self.param(
                "bias",
                logical_init(nn.initializers.zeros, tuple(self.kernel_axes[n_in:])),
                features,
                self.param_dtype,
            )
            y = y + jnp.asarray(bias, self.dtype)
        return y


def dense(
    cfg: TransformerConfig,
    features: int | Sequence[int],
    kernel_axes: Sequence[str],
    name: str | None = None,
    *,
    axis: int | Sequence[int] = -1,
    use_bias: bool | None = None,
    init_scale: float = 1.0,
) -> DenseGeneral:
    """A DenseGeneral with the config's compute/param dtypes and, unless given, its use_bias.

    `name` may be None inside a `setup()`, where the attribute name names the module.
    """
    return DenseGeneral(
        features=features,
        kernel_axes=kernel_axes,
        axis=axis,
        use_bias=cfg.use_bias if use_bias is None else use_bias,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.weight_dtype,
        init_scale=init_scale,
        name=name,
    )
