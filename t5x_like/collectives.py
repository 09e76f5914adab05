"""Host-level agreement between the processes of a run (a flag any one of them raised).

Decisions that change the control flow (stop now, refuse to start) must be taken by every
process at the same point, or the others block in the next collective. A single-process run
skips the collective entirely.
"""

from __future__ import annotations

import jax
import numpy as np


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on at least one; call it on all of them."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.asarray(flags).any())
