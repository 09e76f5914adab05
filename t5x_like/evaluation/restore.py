"""A training run's checkpoint, restored for evaluation or inference on this run's devices.

`restore_run` checks the workdir, resolves the step, builds the experiment for the mesh the
config asks of these devices and restores the params alone (never the optimizer state)
straight into that mesh's shardings. Every bad input fails before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
from absl import logging
from ml_collections import config_dict

from t5x_like import checkpointing
from t5x_like.training import experiment
from t5x_like.training.compilation import enable_compilation_cache


@dataclasses.dataclass
class RestoredRun:
    """What `restore_run` returns."""

    exp: experiment.Experiment
    params: Any
    param_shardings: Any
    step: int
    workdir: str
    checkpoint: str  # <workdir>/checkpoints/<step>


def checkpoint_dir(workdir: str) -> str:
    """`<workdir>/checkpoints` of a training workdir; FileNotFoundError if it is not one."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"Workdir {workdir} does not exist.")
    hint = "a training workdir holds config.json and checkpoints/ (experiments/train.py)"
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise FileNotFoundError(f"Workdir {workdir} has no config.json: {hint}.")
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Workdir {workdir} has no checkpoints/ directory: {hint}.")
    return directory


def restore_run(
    cfg: config_dict.ConfigDict,
    workdir: str,
    *,
    step: int | None = None,
    devices: list[jax.Device] | None = None,
    splits_needed: tuple[str, ...] = (),
) -> RestoredRun:
    """The params of checkpoint `step` (None: the latest) of `workdir`, on `devices`' mesh.

    Raises:
      FileNotFoundError: no such workdir, config.json, checkpoints/ or step.
      config.ConfigError: a config that does not fit the devices, a missing split of
        `splits_needed`, or params that do not fit the config's model.
    """
    directory = checkpoint_dir(workdir)
    devices = list(jax.devices() if devices is None else devices)
    checkpointer = checkpointing.Checkpointer(directory, read_only=True)
    try:
        step = checkpointer.resolve_step(step)
        enable_compilation_cache(cfg.train.get("compilation_cache_dir", ""))
        exp = experiment.build_experiment(cfg, devices, splits_needed=splits_needed)
        logging.info(
            "Restoring %s/%d: mesh %s over %d devices.",
            directory,
            step,
            dict(exp.mesh.shape),
            len(devices),
        )
        abstract, shardings = experiment.state_shardings(exp)
        params = checkpointer.restore_params(step, abstract.params)
    finally:
        checkpointer.close()
    return RestoredRun(
        exp=exp,
        params=params,
        param_shardings=shardings.params,
        step=step,
        workdir=os.path.dirname(directory),
        checkpoint=os.path.join(directory, str(step)),
    )
