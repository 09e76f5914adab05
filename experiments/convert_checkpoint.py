r"""Converts a training run's checkpoint between the scanned and unscanned layer layouts.

  python experiments/convert_checkpoint.py --from_workdir=/tmp/run --to_workdir=/tmp/run_scan \
      --scan_layers=True [--step=200] [--fresh_optimizer]

Restores the params, optimizer state, step, RNG and data-iterator position of one checkpoint
(default: the latest) of --from_workdir, converts every layer stack (t5x_like/layout.py explains
both layouts) and writes them as a checkpoint of the same step into --to_workdir, with the
source's config.json updated to model.scan_layers. Training resumes there with that config
(`experiments/train.py --workdir=<to_workdir> --config=configs/saved_run.py:<to_workdir>`),
on any mesh. The source workdir is only read. Adam's / SGD's state mirrors the params and
converts exactly; Adafactor's factored statistics do not: use --fresh_optimizer (params
converted, optimizer state initialised anew). Runs in one process; arrays pass through host
memory.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from typing import Any

import jax
from absl import app, flags

from t5x_like import checkpointing, layout, partitioning
from t5x_like import config as config_lib
from t5x_like.experiment import assembly as experiment
from t5x_like.log_setup import setup_logging

_FROM = flags.DEFINE_string("from_workdir", None, "Training workdir to convert (only read).")
_TO = flags.DEFINE_string("to_workdir", None, "New workdir for the converted checkpoint.")
_SCAN = flags.DEFINE_bool(
    "scan_layers", None, "Target layout: True scanned (layers/...), False unrolled (layers_i/...)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to convert (default: the latest).")
_FRESH = flags.DEFINE_bool(
    "fresh_optimizer", False, "Initialise the optimizer state anew instead of converting it."
)

_SAVED_RUN = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "configs", "saved_run.py"
)


class _IteratorState:
    """Carries the data iterator's saved JSON state from the restore to the save."""

    state: Any = None

    def set_state(self, state: Any) -> None:
        self.state = state

    def get_state(self) -> Any:
        return self.state


def load_workdir_config(workdir: str) -> Any:
    """A workdir's config.json as a ConfigDict (configs/saved_run.py)."""
    spec = importlib.util.spec_from_file_location("t5x_like_saved_run", _SAVED_RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(workdir)


def _check_fits(converted: Any, abstract: Any) -> None:
    """ValueError naming the first leaf whose converted shape differs from the target's."""
    flat_target = dict(
        ("/".join(partitioning.path_names(p)), x.shape)
        for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]
    )
    flat = dict(
        ("/".join(partitioning.path_names(p)), x.shape)
        for p, x in jax.tree_util.tree_flatten_with_path(converted)[0]
    )
    for name, shape in flat_target.items():
        if flat.get(name) != shape:
            raise ValueError(
                f"The converted state's {name} has shape {flat.get(name, 'nothing')}, the "
                f"target layout needs {shape}: this optimizer's state does not mirror the params "
                "(Adafactor's factored statistics). Convert with --fresh_optimizer."
            )


def convert_workdir(
    from_workdir: str,
    to_workdir: str,
    scan_layers: bool,
    step: int | None = None,
    fresh_optimizer: bool = False,
) -> str:
    """Writes checkpoint `step` of `from_workdir` in the `scan_layers` layout into `to_workdir`
    (plus its config.json); returns the new checkpoint's directory.

    Raises:
      FileNotFoundError: `from_workdir` is no training workdir, or has no such step.
      ValueError: `to_workdir` is the source or already holds checkpoints.
    """
    from t5x_like.experiment.restore import checkpoint_dir

    source_dir = checkpoint_dir(from_workdir)
    to_workdir = os.path.abspath(os.path.expanduser(to_workdir))
    if to_workdir == os.path.abspath(os.path.expanduser(from_workdir)):
        raise ValueError("--to_workdir must differ from --from_workdir (the source is only read).")
    target_dir = os.path.join(to_workdir, "checkpoints")
    if os.path.isdir(target_dir) and os.listdir(target_dir):
        raise ValueError(f"{target_dir} already holds checkpoints: choose a new --to_workdir.")

    cfg = load_workdir_config(from_workdir)
    # Restored and re-placed on one device: the conversion happens on the host anyway, and any
    # saved mesh restores onto it. The saved config keeps the run's own mesh.
    one_device = copy.deepcopy(cfg)
    one_device.mesh.update(data=1, fsdp=1, tensor=1)
    devices = jax.devices()[:1]
    source_exp = experiment.assemble_experiment(one_device, devices=devices)
    abstract, _ = experiment.state_shardings(source_exp)
    iterator = _IteratorState()
    reader = checkpointing.Checkpointer(source_dir, read_only=True)
    try:
        step = reader.resolve_step(step)
        state = reader.restore(step, abstract, iterator)
    finally:
        reader.close()

    target_cfg = copy.deepcopy(cfg)
    target_cfg.model.scan_layers = scan_layers
    one_device.model.scan_layers = scan_layers
    target_exp = experiment.assemble_experiment(one_device, devices=devices)
    target_abstract, target_shardings = experiment.state_shardings(target_exp)
    state = jax.device_get(state)
    params = layout.convert_params(state.params, scan_layers)
    if fresh_optimizer:
        init = jax.jit(target_exp.tx.init, out_shardings=target_shardings.opt_state)
        opt_state = init(params)
    else:
        opt_state = layout.convert_tree(state.opt_state, scan_layers)
    converted = state.replace(params=params, opt_state=opt_state)
    _check_fits(converted, target_abstract)
    converted = jax.device_put(converted, target_shardings)

    os.makedirs(to_workdir, exist_ok=True)
    config_lib.save_config(target_cfg, to_workdir)
    writer = checkpointing.Checkpointer(target_dir, async_save=False)
    try:
        writer.save(step, converted, iterator if iterator.state is not None else None)
    finally:
        writer.close()
    return os.path.join(target_dir, str(step))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _SCAN.value is None:
        raise app.UsageError("--scan_layers=True|False is required (the target layout).")
    setup_logging()
    try:
        path = convert_workdir(
            _FROM.value, _TO.value, _SCAN.value, step=_STEP.value, fresh_optimizer=_FRESH.value
        )
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError.
        sys.exit(f"Error: {e}")
    print(f"Wrote {path} (model.scan_layers={_SCAN.value}).")


if __name__ == "__main__":
    flags.mark_flags_as_required(["from_workdir", "to_workdir"])
    app.run(main)
