"""Guards for reusing a training workdir: one run at a time, and no silent change of model.

`WorkdirLock` holds an exclusive `fcntl.flock` on `<workdir>/.lock` (process 0 only). The OS
drops the lock when its process dies, however it dies, so a crashed run never leaves a stale
lock; the file only records who holds it, for the error message. (flock is reliable on local
disks; on NFS it depends on the mount: there, two runs on one workdir are not detected.) On an
object store (gs://, s3://) it holds a renewed lease object instead (`storage.LeaseLock`): a
crashed run's lease expires after `LEASE_TTL_S` and the next run takes it over.

Every file operation goes through t5x_like/storage.py, so a workdir may be a local path or an
object-store URL; `check_workdir` probes an object store before anything is built.

`check_config_change` compares the config about to resume with the `config.json` the workdir's
previous run saved, before anything compiles or restores: fields that change the shapes or
layout of the checkpoint refuse the resume, the others are logged as a diff.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
from typing import Any

import jax
from absl import logging
from ml_collections import config_dict

from t5x_like import collectives, storage
from t5x_like import config as config_lib
from t5x_like.errors import ConfigError

LOCK_FILE = ".lock"
# How long an object-store lease outlives its last renewal (renewed every third of it): a
# crashed run blocks a relaunch on the same workdir for at most this long.
LEASE_TTL_S = float(os.environ.get("T5X_LIKE_LEASE_TTL_S", "60"))

# Model fields that change how the model computes but not its parameters: free to change on
# resume. Every other model field is taken to change the parameter shapes or layout.
RUNTIME_MODEL_FIELDS = ("dtype", "remat", "dropout_rate")
# Data fields that define the vocabulary: another vocabulary gives the embedding rows other
# meanings, even when the rounded model.vocab_size stays the same.
VOCAB_FIELDS = ("data.vocab_size", "data.vocab_path", "data.vocab_dataset", "data.extra_ids")


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir."""


class ConfigChangeError(ConfigError):
    """The config differs from the workdir's saved one in fields its checkpoints depend on."""


class WorkdirError(ConfigError):
    """The workdir cannot hold a run: a file, not writable, or too little free disk space."""


def read_saved_config(path: str, fix: str) -> dict[str, Any]:
    """The JSON object of a workdir's `config.json` at `path`.

    `fix`: what the user can do about a damaged file, appended to the message.

    Raises:
      ConfigError: the file is empty, not UTF-8, not JSON or not a JSON object (naming it).
    """
    raw = storage.read_bytes(path)
    problem = None
    if not raw.strip():
        problem = "is empty"
    else:
        try:
            saved = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problem = f"is not text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        except json.JSONDecodeError as e:
            problem = f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        else:
            if not isinstance(saved, dict):
                problem = f"holds a JSON {type(saved).__name__}, not the config's object"
    if problem:
        raise ConfigError(f"{path} {problem}: the run's saved config is damaged. {fix}")
    return saved


def _existing_parent(path: str) -> str:
    """`path` or its nearest ancestor that exists."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def format_bytes(n: float) -> str:
    """`n` bytes in B, KiB, MiB, GiB or TiB, for messages."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"


def check_workdir(workdir: str, needed_bytes: int = 0) -> None:
    """Checks, before anything is built, that `workdir` can hold a run: a directory (or one
    that can be made), writable, with at least `needed_bytes` free on its disk (one
    checkpoint's estimate; 0 skips the check).

    On an object store (gs://, s3://): that the bucket is reachable and writable with this
    machine's credentials (`storage.check_reachable`); there is no disk to measure.

    Raises:
      WorkdirError: naming --workdir, the problem and the figure.
      storage.StorageError: an object store that is unreachable or refuses the credentials.
    """
    workdir = storage.resolve(workdir)
    if storage.is_remote(workdir):
        storage.check_reachable(workdir)
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(
            f"--workdir={workdir} is a file, not a directory: pass a directory (a new one is "
            "created) or a training run's workdir."
        )
    existing = _existing_parent(workdir)
    if not os.path.isdir(existing):
        raise WorkdirError(
            f"--workdir={workdir} cannot be created: {existing} is a file, not a directory."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkdirError(
            f"--workdir={workdir}: {existing} is not writable by this user: pass a writable "
            "--workdir."
        )
    if needed_bytes <= 0:
        return
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise WorkdirError(
            f"--workdir={workdir}: its disk has {format_bytes(free)} free, less than one "
            f"checkpoint of this model needs ({format_bytes(needed_bytes)}, params + "
            "optimizer state): free space on it, or pass a --workdir on another disk."
        )


class WorkdirLock:
    """Exclusive lock on a workdir for the duration of a run (a context manager).

    Only process 0 takes the file lock; the outcome is shared with the other processes so
    that all of them raise when it is refused.
    """

    def __init__(self, workdir: str):
        workdir = storage.resolve(workdir)
        self.path = storage.join(workdir, LOCK_FILE)
        self._fd: int | None = None
        self._lease = (
            storage.LeaseLock(self.path, LEASE_TTL_S) if storage.is_remote(workdir) else None
        )

    def __enter__(self) -> WorkdirLock:
        holder = None
        if jax.process_index() == 0:
            holder = self._lease.acquire() if self._lease is not None else self._acquire()
        if collectives.any_process(holder is not None):
            holder = holder or f"its details are in {self.path}"
            if self._lease is not None:
                released = (
                    f"A run that dies without releasing it leaves a lease that expires "
                    f"{LEASE_TTL_S:.0f}s after its last renewal; then a relaunch takes it over."
                )
            else:
                released = (
                    "The lock is released by the OS when its process exits, so a crashed run "
                    "never blocks a relaunch."
                )
            raise WorkdirLockedError(
                f"The workdir {storage.dirname(self.path)} is in use by another training run "
                f"({holder}). Wait for that run to finish or stop it, or pass another "
                f"--workdir. {released}"
            )
        return self

    def _acquire(self) -> str | None:
        """Takes the lock; on refusal returns the holder's description instead."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            return holder
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd
        return None

    def __exit__(self, *exc_info: Any) -> None:
        if self._lease is not None:
            self._lease.release()
        if self._fd is not None:
            # Closing the descriptor releases the flock; the file stays (harmless, and
            # removing it would race with a run that is opening it).
            os.close(self._fd)
            self._fd = None


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return (
        f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('started')}: "
        f"{info.get('command')}"
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_structural(field: str, saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether changing `field` between `saved` and `now` changes the checkpoint's layout."""
    section, _, name = field.partition(".")
    if section == "model":
        return name not in RUNTIME_MODEL_FIELDS
    if field in VOCAB_FIELDS or field in ("optimizer.name", "train.nan_policy"):
        return True  # nan_policy 'skip' wraps the optimizer state (optax.apply_if_finite).
    if field == "optimizer.grad_clip_norm" or (
        field == "optimizer.weight_decay" and now.get("optimizer.name") == "adafactor"
    ):
        # Turning them on or off adds or removes an optax transformation (and its state).
        return bool(saved.get(field)) != bool(now.get(field))
    return False


def _has_checkpoints(workdir: str) -> bool:
    return any(name.isdigit() for name in storage.listdir(storage.join(workdir, "checkpoints")))


def config_diff(saved: dict[str, Any], cfg: config_dict.ConfigDict) -> tuple[list, list]:
    """(structural, other) differences as 'field: saved X, now Y' lines.

    Fields missing on one side (configs saved before the field existed) are not compared.
    """
    old = _flatten(saved)
    new = _flatten(json.loads(config_lib.to_json(cfg)))
    structural, other = [], []
    for field in sorted(set(old) & set(new)):
        if old[field] != new[field]:
            line = f"{field}: saved {old[field]!r}, now {new[field]!r}"
            (structural if _is_structural(field, old, new) else other).append(line)
    return structural, other


# Model fields that change what a model computes without changing its parameter shapes (a
# shape change is caught when the params load): params trained under other values are wrong.
FUNCTION_MODEL_FIELDS = (
    "activation",
    "norm",
    "norm_eps",
    "norm_position",
    "position",
    "scale_attention_logits",
    "scale_tied_logits",
    "scale_embeddings",
    "rope_theta",
    "rope_scaling_factor",
    "sliding_window",
    "relative_attention_max_distance",
)


def init_from_diff(saved: dict[str, Any], cfg: config_dict.ConfigDict) -> list[str]:
    """'field: saved X, now Y' for each model field of `FUNCTION_MODEL_FIELDS` and vocabulary
    field (`VOCAB_FIELDS` but data.vocab_dataset, which fine-tuning sets to the pretraining
    corpus) in which a `train.init_from` source's saved config differs from `cfg`."""
    old = _flatten(saved)
    new = _flatten(json.loads(config_lib.to_json(cfg)))
    fields = [f"model.{f}" for f in FUNCTION_MODEL_FIELDS]
    fields += [f for f in VOCAB_FIELDS if f != "data.vocab_dataset"]
    return [
        f"{field}: saved {old[field]!r}, now {new[field]!r}"
        for field in fields
        if field in old and field in new and old[field] != new[field]
    ]


def check_init_from_config(cfg: config_dict.ConfigDict, source_workdir: str) -> None:
    """Refuses a `train.init_from` source whose config.json differs from `cfg` in fields that
    change the model's function but not its shapes (or its vocabulary); with
    `train.allow_config_change=True` a warning. A source without config.json is not compared.

    Raises:
      ConfigChangeError: naming the fields and their saved values.
    """
    path = storage.join(source_workdir, "config.json")
    if not storage.isfile(path):
        logging.warning("train.init_from %s has no config.json: its model is not compared.", path)
        return
    saved = read_saved_config(path, "Restore it, or point train.init_from at another workdir.")
    lines = "; ".join(init_from_diff(saved, cfg))
    if not lines:
        return
    if cfg.train.allow_config_change:
        logging.warning(
            "train.init_from=%s was trained with other model settings (%s); loading its params "
            "anyway (train.allow_config_change=True).",
            source_workdir,
            lines,
        )
        return
    raise ConfigChangeError(
        f"train.init_from={source_workdir} was trained with other model settings ({lines}): "
        "set them to the saved values, or pass --config.train.allow_config_change=True to "
        "load its params anyway."
    )


def check_config_change(cfg: config_dict.ConfigDict, workdir: str) -> None:
    """Refuses to resume `workdir` with a config its checkpoints do not fit; logs other changes.

    Call after the config is resolved (model.vocab_size filled in) and before anything is
    compiled or restored. `train.allow_config_change=True` turns the refusal into a warning.

    Raises:
      ConfigChangeError: listing the conflicting fields and the ways out.
    """
    path = storage.join(workdir, "config.json")
    if not storage.isfile(path):
        return
    saved = read_saved_config(
        path,
        f"Restore it from a copy of the run, or pass a new --workdir; {workdir}/checkpoints/ "
        "keeps the weights.",
    )
    structural, other = config_diff(saved, cfg)
    if other:
        logging.info("Config changes since the last run in %s: %s", workdir, "; ".join(other))
    if not structural:
        return
    lines = "; ".join(structural)
    if not _has_checkpoints(workdir):
        logging.warning(
            "Config of %s changed in model-shaping fields (%s); it has no checkpoint yet, so the "
            "run starts afresh with the new config.",
            workdir,
            lines,
        )
        return
    if cfg.train.allow_config_change:
        logging.warning(
            "Resuming %s with a changed model/checkpoint config (train.allow_config_change=True): "
            "%s. Restoring fails if the saved state does not fit.",
            workdir,
            lines,
        )
        return
    raise ConfigChangeError(
        f"The config differs from the one {workdir} was trained with, in fields its checkpoints "
        f"depend on: {lines}. Use a new --workdir for the new config, or resume with the saved "
        f"one (--config=configs/saved_run.py:{workdir}), or pass "
        "--config.train.allow_config_change=True to try anyway."
    )


def save_config(cfg: config_dict.ConfigDict, workdir: str) -> str:
    """Writes `<workdir>/config.json` whole (atomically, local or object store); its path."""
    path = storage.join(storage.resolve(workdir), "config.json")
    storage.write_text(path, config_lib.to_json(cfg) + "\n")
    return path
