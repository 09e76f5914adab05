"""Guards for reusing a training workdir: one run at a time, and no silent change of model.

`WorkdirLock` holds an exclusive `fcntl.flock` on `<workdir>/.lock` (process 0 only). The OS
drops the lock when its process dies, however it dies, so a crashed run never leaves a stale
lock; the file only records who holds it, for the error message. (flock is reliable on local
disks; on NFS it depends on the mount: there, two runs on one workdir are not detected.)

`check_config_change` compares the config about to resume with the `config.json` the workdir's
previous run saved, before anything compiles or restores: fields that change the shapes or
layout of the checkpoint refuse the resume, the others are logged as a diff.
"""

from __future__ import annotations

import datetime
import fcntl
import glob
import json
import os
import socket
import sys
from typing import Any

import jax
from absl import logging
from ml_collections import config_dict

from t5x_like import collectives
from t5x_like import config as config_lib
from t5x_like.errors import ConfigError

LOCK_FILE = ".lock"

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


class WorkdirLock:
    """Exclusive lock on a workdir for the duration of a run (a context manager).

    Only process 0 takes the file lock; the outcome is shared with the other processes so
    that all of them raise when it is refused.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        holder = self._acquire() if jax.process_index() == 0 else None
        if collectives.any_process(holder is not None):
            holder = holder or f"its details are in {self.path}"
            raise WorkdirLockedError(
                f"The workdir {os.path.dirname(self.path)} is in use by another training run "
                f"({holder}). Wait for that run to finish or stop it, or pass another "
                "--workdir. The lock is released by the OS when its process exits, so a "
                "crashed run never blocks a relaunch."
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
    steps = glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*"))
    return any(os.path.basename(p).isdigit() for p in steps)


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


def check_config_change(cfg: config_dict.ConfigDict, workdir: str) -> None:
    """Refuses to resume `workdir` with a config its checkpoints do not fit; logs other changes.

    Call after the config is resolved (model.vocab_size filled in) and before anything is
    compiled or restored. `train.allow_config_change=True` turns the refusal into a warning.

    Raises:
      ConfigChangeError: listing the conflicting fields and the ways out.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
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
