"""A training run's checkpoint, restored for evaluation or inference on this run's devices.

`restore_run` checks the workdir, resolves the step, builds the experiment for the mesh the
config asks of these devices and restores the params alone (never the optimizer state)
straight into that mesh's shardings. Every bad input fails before anything is compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from absl import logging
from ml_collections import config_dict

from t5x_like import checkpointing, storage
from t5x_like.experiment import assembly as experiment
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
    workdir = storage.resolve(workdir)
    hint = "a training workdir holds config.json and checkpoints/ (experiments/train.py)"
    if not storage.isdir(workdir):
        raise FileNotFoundError(
            f"Workdir {workdir} does not exist: pass --workdir=<a training run's workdir>; {hint}."
        )
    if not storage.isfile(storage.join(workdir, "config.json")):
        raise FileNotFoundError(f"Workdir {workdir} has no config.json: {hint}.")
    directory = storage.join(workdir, "checkpoints")
    if not storage.isdir(directory):
        raise FileNotFoundError(f"Workdir {workdir} has no checkpoints/ directory: {hint}.")
    return directory


def resolve_checkpoint(checkpointer: checkpointing.Checkpointer, step: int | None) -> int:
    """`step` (None: the latest) of `checkpointer`, checked to hold a saved state.

    Raises:
      FileNotFoundError: no checkpoint at all, none for `step`, or one without its `state/`
        (a save that never finished, or a copy that lost files); the message says what to do.
    """
    if not checkpointer.all_steps():
        raise FileNotFoundError(
            f"No checkpoints in {checkpointer.directory} yet: the run saves one every "
            "train.checkpoint_every steps and at its end; point at a run that has saved one."
        )
    step = checkpointer.resolve_step(step)
    state = storage.join(checkpointer.directory, str(step), "state")
    if not storage.listdir(state):
        raise FileNotFoundError(
            f"Checkpoint {checkpointer.directory}/{step} has no saved state ({state} is missing "
            "or empty: a save that never finished, or an incomplete copy). Choose another step "
            f"of {checkpointer.all_steps()}, or delete {checkpointer.directory}/{step}."
        )
    return step


def init_from_dir(init_from: str, init_step: int | None = None) -> str:
    """The checkpoint directory that `train.init_from` names (a workdir or its checkpoints/).

    Checks, before anything is built, that it holds a complete checkpoint for `init_step`
    (None: the latest), so that a fine-tuning run with a bad path fails before compiling.

    Raises:
      FileNotFoundError: naming train.init_from / train.init_step and what to set them to.
    """
    path = storage.resolve(init_from)
    nested = storage.join(path, "checkpoints")
    directory = nested if storage.isdir(nested) else path
    hint = "point train.init_from at a pretraining workdir or its checkpoints/ directory"
    if not storage.isdir(directory):
        raise FileNotFoundError(f"train.init_from={init_from!r}: no such directory; {hint}.")
    checkpointer = checkpointing.Checkpointer(directory, read_only=True)
    try:
        if init_step is not None and init_step not in checkpointer.all_steps():
            raise FileNotFoundError(
                f"train.init_step={init_step}: no such checkpoint in {directory}; set it to one "
                f"of {sorted(checkpointer.all_steps())}, or None for the latest."
            )
        try:
            resolve_checkpoint(checkpointer, init_step)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"train.init_from={init_from!r}: {e} Or {hint}.") from e
    finally:
        checkpointer.close()
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
        step = resolve_checkpoint(checkpointer, step)
        enable_compilation_cache(cfg.train.compilation_cache_dir)
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
        workdir=storage.dirname(directory),
        checkpoint=storage.join(directory, str(step)),
    )
