"""host_memory: with "reuse", a step's temporary buffer is not page-faulted in again each run."""

import os
import subprocess
import sys

import pytest

from t5x_like import host_memory
from t5x_like.errors import ConfigError

# A jitted program whose intermediate [8192, 4096] f32 (128 MiB, 32768 pages) cannot be fused
# away: XLA:CPU allocates it at every execution. Prints the minor page faults per execution.
_FAULTS = """
import resource, sys
from t5x_like import host_memory
print(host_memory.configure(sys.argv[1]))
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: (jnp.tanh(x @ w) @ w.T).sum(axis=0))
x, w = jnp.ones((8192, 32)), jnp.ones((32, 4096))
f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x, w).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""
_PAGES = 8192 * 4096 * 4 // 4096


def _faults_per_run(mode: str) -> tuple[str, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop(host_memory.MODE_ENV, None)
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    return out[0], float(out[-1])


@pytest.mark.skipif(
    sys.platform != "linux", reason="glibc's malloc only: elsewhere configure() changes nothing"
)
def test_reuse_stops_refaulting_the_temporary_buffer():
    said, reuse_faults = _faults_per_run("auto")  # JAX_PLATFORMS=cpu: auto means reuse.
    assert said.startswith("glibc keeps freed blocks for reuse (JAX platforms 'cpu'")
    assert reuse_faults < 0.02 * _PAGES
    said, system_faults = _faults_per_run("system")
    assert said == "system malloc settings (T5X_LIKE_HOST_MALLOC=system)"
    assert system_faults > 0.5 * _PAGES  # glibc's default: the whole buffer, every run.


def test_unknown_mode_is_a_config_error(monkeypatch):
    monkeypatch.setenv(host_memory.MODE_ENV, "fast")
    with pytest.raises(ConfigError, match=r"T5X_LIKE_HOST_MALLOC='fast'.*auto.*reuse.*system"):
        host_memory.configure()


def test_too_late_once_backends_started(monkeypatch):
    import jax

    jax.devices()  # This process's backends are up (as in a notebook that ran JAX first).
    monkeypatch.setattr(host_memory, "_state", {"description": ""})
    said = host_memory.configure("reuse")
    if sys.platform == "linux":
        assert "JAX's backends had started before host_memory.configure()" in said
    assert host_memory.describe() == said


def test_auto_leaves_accelerator_runs_alone(monkeypatch):
    import jax

    previous = jax.config.jax_platforms
    try:
        jax.config.update("jax_platforms", "cuda,cpu")
        assert host_memory._runs_on_cpu() == (False, "JAX platforms 'cuda,cpu'")
        jax.config.update("jax_platforms", None)
        monkeypatch.delenv("JAX_PLATFORMS", raising=False)
        monkeypatch.setattr(host_memory, "_accelerator_plugins", lambda: ["cuda13"])
        assert host_memory._runs_on_cpu() == (False, "accelerator plugins installed: cuda13")
        monkeypatch.setattr(host_memory, "_accelerator_plugins", lambda: [])
        assert host_memory._runs_on_cpu() == (True, "no accelerator plugin installed")
    finally:
        jax.config.update("jax_platforms", previous)
