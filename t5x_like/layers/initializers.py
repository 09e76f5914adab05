"""Parameter initialisers that carry logical axis names, and init-time rescaling of params.

Every parameter of the model is created through `logical_init`, so its logical axes travel with
it (`nn.LogicallyPartitioned` boxes) and the partitioner can shard it without a table of names.
`rescale` multiplies freshly initialised parameters chosen by their path (a family's init
scheme, e.g. GPT-2's small embeddings and depth-scaled residual projections), boxes kept.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax


def logical_init(init: jax.nn.initializers.Initializer, axes: Sequence[str]):
    """Wraps `init` so the created parameter is annotated with logical `axes`."""
    return nn.with_logical_partitioning(init, tuple(axes))


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def rescale(params: Any, factor: Callable[[tuple[str, ...]], float]) -> Any:
    """`params` (boxed or plain) with each leaf multiplied by `factor(its path names)`.

    A leaf drawn from N(0, s^2) (or a truncated normal of std s) times c is exactly one drawn
    with std c * s, so scaling after `init` is the same as initialising with the scaled std;
    leaves whose factor is 1 are returned untouched (no multiply, bit for bit the same).
    """

    def scale(path: tuple[Any, ...], leaf: Any) -> Any:
        c = factor(_names(path))
        if c == 1.0:
            return leaf
        if isinstance(leaf, nn.meta.AxisMetadata):
            return leaf.replace_boxed(leaf.unbox() * c)
        return leaf * c

    is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
    return jax.tree_util.tree_map_with_path(scale, params, is_leaf=is_box)
