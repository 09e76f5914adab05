"""Host malloc settings for runs on XLA:CPU: glibc keeps freed blocks for the next step.

XLA:CPU allocates an executable's temporary buffer (every intermediate of a train step: 1.2 GiB
for configs/benchmark.py:cpu) afresh at each execution, from XLA's worker threads. glibc serves
such a block with mmap (a worker thread's arena cannot hold it) and unmaps it on free, so every
step page-faults and zero-fills its whole temporary buffer again: 316k page faults and 0.5 s of
kernel time per 2.5 s step on 2 cores. With one arena, no mmap and no trimming of the heap, freed
blocks stay in the heap and the next step reuses them: no page faults, and that step ~9% faster.

`configure()` must run before JAX starts its backends (the scripts call it first): threads that
have already allocated keep their own arenas. The mode comes from T5X_LIKE_HOST_MALLOC:
  auto    (default) reuse when the run is on CPU: JAX_PLATFORMS starts with cpu, or no
          accelerator plugin (CUDA, ROCm, TPU) is installed; system settings otherwise (a GPU or
          TPU host's allocations are small and many-threaded, one arena would serialise them)
  reuse   always (on glibc)
  system  never: glibc's defaults
The cost: memory freed by one step is not returned to the kernel, which is what the next step
needs anyway (with a trim threshold of INT_MAX, mallopt's largest, instead of none, one run in
four still page-faulted 155k times a step).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform

from t5x_like.errors import ConfigError

MODE_ENV = "T5X_LIKE_HOST_MALLOC"
MODES = ("auto", "reuse", "system")

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_NO_TRIMMING = -1  # M_TRIM_THRESHOLD -1: never return the heap top to the kernel.

_state = {"description": "system malloc settings (host_memory.configure() not called)"}


def _accelerator_plugins() -> list[str]:
    """The JAX accelerator plugins installed (found without starting JAX's backends)."""
    found = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    if importlib.util.find_spec("jax_plugins") is not None:
        import jax_plugins

        found += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return sorted(set(found))


def _runs_on_cpu() -> tuple[bool, str]:
    """Whether this process's JAX will run on CPU, and why we think so."""
    import jax

    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        first = platforms.split(",")[0].strip()
        return first == "cpu", f"JAX platforms {platforms!r}"
    plugins = _accelerator_plugins()
    if plugins:
        return False, f"accelerator plugins installed: {', '.join(plugins)}"
    return True, "no accelerator plugin installed"


def _backends_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def _reuse_freed_memory() -> None:
    """One arena for all threads, no mmap for large blocks, freed memory kept at the heap top."""
    libc = ctypes.CDLL(None)
    for param, value in (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_MAX, 0),
        (_M_TRIM_THRESHOLD, _NO_TRIMMING),
    ):
        if libc.mallopt(param, value) != 1:
            raise OSError(f"glibc refused mallopt({param}, {value}).")


def configure(mode: str | None = None) -> str:
    """Applies the host malloc `mode` (default: $T5X_LIKE_HOST_MALLOC, else "auto") and returns a
    one-line description of the outcome, also kept for `describe()`.

    Raises:
      ConfigError: an unknown mode.
    """
    mode = mode or os.environ.get(MODE_ENV) or "auto"
    if mode not in MODES:
        raise ConfigError(f"{MODE_ENV}={mode!r} is not a host malloc mode: use one of {MODES}.")
    if mode == "system":
        description = f"system malloc settings ({MODE_ENV}=system)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        description = "system malloc settings (not glibc)"
    elif _backends_started():
        description = (
            "system malloc settings (JAX's backends had started before host_memory.configure())"
        )
    else:
        on_cpu, why = (True, f"{MODE_ENV}=reuse") if mode == "reuse" else _runs_on_cpu()
        if on_cpu:
            _reuse_freed_memory()
            description = f"glibc keeps freed blocks for reuse ({why}; {MODE_ENV}=system: off)"
        else:
            description = f"system malloc settings ({why})"
    _state["description"] = description
    return description


def describe() -> str:
    """What the last `configure()` did, for logs and benchmark reports."""
    return _state["description"]
