"""The training state: one pytree holding everything a resumed run needs."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """Step, parameters, optimizer state and the base RNG (dropout keys are folded from it).

    The optimizer (an optax transformation) is not part of the state: it is code, rebuilt from the
    config, so the state stays pure data that Orbax can save and restore onto any mesh.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
