"""Compilation bookkeeping: the persistent XLA cache and a count of backend compilations.

The count lets the trainer log (and tests assert) that nothing recompiles after the first steps.
"""

import os
from typing import Any

import jax

_COMPILES = {"count": 0}


def _count_compiles(event: str, duration: float, **kwargs: Any) -> None:
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES["count"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def compile_count() -> int:
    """Number of XLA backend compilations in this process so far (cache hits excluded)."""
    return _COMPILES["count"]


def enable_compilation_cache(cache_dir: str) -> None:
    """Turns on JAX's persistent compilation cache so relaunches skip XLA compilation."""
    if not cache_dir:
        return
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
