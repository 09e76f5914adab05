"""Multi-process start-up: `jax.distributed` initialisation from flags or the environment,
then a preflight that proves every process joined and collectives work.

The experiment scripts import this module for its flags and call `initialize_from_flags()`
first thing in main(), before anything touches JAX devices:

  --distributed=auto|on|off   auto: initialise when the flags, the JAX_* variables below or a
                              cluster JAX detects by itself (TPU pod, SLURM, Open MPI,
                              Kubernetes/GKE) say this is a multi-process job.
  --coordinator_address       host:port of process 0 (env JAX_COORDINATOR_ADDRESS).
  --num_processes             processes in the job (env JAX_NUM_PROCESSES).
  --process_id                this process, 0..num_processes-1 (env JAX_PROCESS_ID).
  --initialization_timeout    seconds to wait for every process to join.
  --barrier_timeout           seconds the preflight collective may take.

A process that cannot join (a missing process, a wrong address) exits within the timeout with
a message that says what to check, instead of hanging or dying in a C++ abort. On CPU the
cross-process collectives go through gloo (jax's `jax_cpu_collectives_implementation`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

import jax
import numpy as np
from absl import flags, logging

MODES = ("auto", "on", "off")
# JAX's own initialisation deadline is set this much later than ours, so that our watchdog
# reports a missing process first (JAX's deadline aborts the process from C++).
_JAX_TIMEOUT_MARGIN_S = 15
# Exit status of a process that gave up waiting for the others.
EXIT_NOT_JOINED = 3

_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    MODES,
    "Multi-process start-up: auto (when the flags, JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
    "JAX_PROCESS_ID or a TPU pod / SLURM / Open MPI / Kubernetes environment say so), on, off.",
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, reachable from every host (env JAX_COORDINATOR_ADDRESS).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the job (env JAX_NUM_PROCESSES).", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    None,
    "This process's index, 0..num_processes-1 (env JAX_PROCESS_ID).",
    lower_bound=0,
)
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    300,
    "Seconds to wait for every process to join before giving up with an error.",
    lower_bound=1,
)
_BARRIER_TIMEOUT = flags.DEFINE_integer(
    "barrier_timeout",
    120,
    "Seconds the start-up barrier and test collective across all processes may take.",
    lower_bound=1,
)


class DistributedError(RuntimeError):
    """Inconsistent multi-process settings; the message names the flag and the fix."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} must be an integer.") from None


def _detected_cluster() -> str | None:
    """The name of a multi-process environment JAX's own auto-detection recognises, if any.

    JAX keeps its cluster types (Cloud TPU, SLURM, Open MPI, Kubernetes; mpi4py is opt-in and
    skipped, as JAX does) in a private registry; if that moves, auto-detection is off and the
    explicit flags still work.
    """
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - depends on the jax version
        return None
    for env in getattr(clusters.ClusterEnv, "_cluster_types", []):
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return env.__name__
        except Exception:  # A probe that fails (no metadata server, ...) is not a cluster.
            continue
    return None


@contextlib.contextmanager
def _watchdog(seconds: float, message: str) -> Iterator[None]:
    """Exits the process with `message` if the body has not finished within `seconds`.

    Start-up collectives block in C++ and cannot be interrupted from Python; exiting is the
    only way to turn a hang into an error.
    """

    def fire() -> None:
        logging.error("Error: %s", message)
        logging.flush()
        sys.stderr.flush()
        os._exit(EXIT_NOT_JOINED)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _join_hint(address: str | None, count: int | None) -> str:
    last = f"{count - 1}" if count else "N-1"
    return (
        f"start the same command on every host with --process_id=0..{last}, "
        f"--num_processes={count or 'N'} and --coordinator_address={address or 'HOST:PORT'} "
        "(host:port of process 0, reachable from every host), or raise "
        "--initialization_timeout"
    )


def _not_joined_message(
    address: str | None, count: int | None, process_id: int | None, timeout: float
) -> str:
    if process_id == 0:
        return (
            f"Not all of the {count} processes joined within {timeout:.0f} s (this is process 0, "
            f"hosting the coordinator on {address}): {_join_hint(address, count)}."
        )
    who = f"Process {process_id} of {count}" if process_id is not None else "This process"
    return (
        f"{who} did not join within {timeout:.0f} s: the coordinator at {address} (process 0) "
        f"did not answer or not every process started; {_join_hint(address, count)}."
    )


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    initialization_timeout: float = 300,
    barrier_timeout: float = 120,
) -> bool:
    """Initialises `jax.distributed` when `mode` and the settings call for it; returns whether
    it did. Must run before anything touches JAX devices.

    Unset arguments fall back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
    then to JAX's cluster auto-detection. With one process (num_processes=1, or auto mode and
    nothing that says otherwise) nothing is initialised.

    Raises:
      DistributedError: an unknown mode, or settings that contradict each other.
    Exits the process (status EXIT_NOT_JOINED, with a message naming the flags to check) when
    the processes do not all join within `initialization_timeout`, or the preflight collective
    takes longer than `barrier_timeout`.
    """
    if mode not in MODES:
        raise DistributedError(f"--distributed={mode!r} must be one of {MODES}.")
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = [v for v in (address, count, index) if v is not None]
    if mode == "off":
        if count not in (None, 1):
            raise DistributedError(
                f"--distributed=off contradicts num_processes={count}: drop --distributed=off "
                "or run a single process."
            )
        return False
    if count == 1:
        return False  # A single process needs no coordinator.
    # JAX fills in what the flags leave unset from a cluster it recognises.
    cluster = _detected_cluster() if None in (address, count, index) else None
    if mode == "auto" and not explicit and cluster is None:
        return False
    missing = [
        flag
        for flag, value in (
            ("--coordinator_address", address),
            ("--num_processes", count),
            ("--process_id", index),
        )
        if value is None
    ]
    if missing and cluster is None:
        raise DistributedError(
            f"A multi-process run needs {', '.join(missing)} (or the JAX_COORDINATOR_ADDRESS / "
            "JAX_NUM_PROCESSES / JAX_PROCESS_ID variables) when no TPU pod, SLURM, Open MPI or "
            "Kubernetes environment is detected: set them on every process, or "
            "--distributed=off for one process."
        )
    if index is not None and count is not None and not 0 <= index < count:
        raise DistributedError(
            f"--process_id={index} must be in 0..{count - 1} for --num_processes={count}."
        )
    if index is not None and count is not None:
        # Quiet processes other than 0 from the start (the script calls this again later).
        from t5x_like.log_setup import setup_logging

        setup_logging(process_index=index, process_count=count)
    # jax 0.10.2 already defaults to gloo; set it only where nothing else was chosen.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info(
        "Joining a multi-process job: coordinator %s, process %s of %s%s.",
        address or "(auto)",
        "(auto)" if index is None else index,
        count or "(auto)",
        f", detected {cluster}" if cluster else "",
    )
    with _watchdog(
        initialization_timeout,
        _not_joined_message(address, count, index, initialization_timeout),
    ):
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=count,
            process_id=index,
            # Explicit settings are the whole story: JAX would otherwise still consult a
            # detected cluster and, e.g. under SLURM, restrict each process to one GPU.
            cluster_detection_method="deactivate" if not missing else None,
            initialization_timeout=int(initialization_timeout) + _JAX_TIMEOUT_MARGIN_S,
        )
    preflight(barrier_timeout)
    return True


def initialize_from_flags() -> bool:
    """`initialize` with this module's flags; call first thing in an experiment's main().

    Inconsistent flags end the process with the error's message (no traceback)."""
    try:
        return initialize(
            _DISTRIBUTED.value,
            coordinator_address=_COORDINATOR_ADDRESS.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
            initialization_timeout=_INITIALIZATION_TIMEOUT.value,
            barrier_timeout=_BARRIER_TIMEOUT.value,
        )
    except DistributedError as e:
        sys.exit(f"Error: {e}")


def preflight(barrier_timeout: float = 120) -> None:
    """Logs this process's place in the job, then proves every process and device takes part
    in a collective: a barrier, then a sum of one per device over all devices.

    Exits with a message (not a hang) when that takes longer than `barrier_timeout` seconds.
    """
    index, count = jax.process_index(), jax.process_count()
    logging.info(
        "Process %d of %d: %d local / %d global %s devices.",
        index,
        count,
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
    )
    if count == 1:
        return
    message = (
        f"Process {index} of {count}: the start-up collective across all processes did not "
        f"finish within {barrier_timeout:.0f} s; a process may have died or its devices are "
        "unreachable (on CPU, collectives use gloo over TCP: check firewalls between hosts). "
        "See the other processes' logs, or raise --barrier_timeout."
    )
    with _watchdog(barrier_timeout, message):
        # jax has no public barrier with a timeout; its distributed client does.
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
        client.wait_at_barrier("t5x_like_preflight", int(barrier_timeout * 1000))
        total = _sum_over_devices()
    if total != jax.device_count():
        raise DistributedError(
            f"The start-up collective summed {total} over {jax.device_count()} devices: the "
            "processes disagree on the device layout. Start every process with the same "
            "device settings (e.g. XLA_FLAGS, CUDA_VISIBLE_DEVICES)."
        )
    logging.info("All %d processes joined; a collective over %d devices works.", count, total)


def _sum_over_devices() -> int:
    """One per device, summed by a jitted collective over every device of every process."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    # A plain Mesh: jax.make_mesh refuses multi-slice TPU topologies, and order is irrelevant.
    mesh = Mesh(np.asarray(jax.devices()), ("all",))
    ones = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("all")), np.ones(jax.local_device_count(), np.int32)
    )
    total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(ones)
    return int(np.asarray(total.addressable_data(0)))
