"""Parameter initialisers that carry logical axis names.

Every parameter of the model is created through `logical_init`, so its logical axes travel with
it (`nn.LogicallyPartitioned` boxes) and the partitioner can shard it without a table of names.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax


def logical_init(init: jax.nn.initializers.Initializer, axes: Sequence[str]):
    """Wraps `init` so the created parameter is annotated with logical `axes`."""
    return nn.with_logical_partitioning(init, tuple(axes))
