"""Orbax checkpoints of the training state and the data-iterator position.

A checkpoint `<workdir>/checkpoints/<step>/` holds `state` (params, optimizer state, step, RNG)
and `data_iterator` (the grain iterator's JSON state), so a resumed run continues exactly where
the saved one was. Restoring takes abstract arrays with shardings, so a checkpoint lands directly
on whatever mesh the restoring run has.
"""

from __future__ import annotations

import os
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp

from t5x_like.config import ConfigError
from t5x_like.partitioning import path_names
from t5x_like.training.train_state import TrainState


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying the target shardings."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _flat_with_paths(tree: Any) -> list[tuple[Any, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` for TrainState + data-iterator state."""

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int = 3,
        save_interval_steps: int = 1,
        async_save: bool = True,
        read_only: bool = False,
    ):
        """`read_only`: for readers of another run's checkpoints (fine-tuning, evaluation,
        inference), which must never save into or prune them."""
        self.directory = os.path.abspath(os.path.expanduser(directory))
        # Orbax warns when read_only overrides these; pass what read_only implies.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else save_interval_steps,
            enable_async_checkpointing=async_save and not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data_iterator"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self, step: int, state: TrainState, data_iterator: Any = None, force: bool = False
    ) -> bool:
        """Starts an (async) save of `state` at `step`; returns whether a save was started.

        Steps that already have a checkpoint are never overwritten.
        """
        if step in self._manager.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(flax.serialization.to_state_dict(state))}
        if data_iterator is not None:
            items["data_iterator"] = ocp.args.JsonSave(data_iterator.get_state())
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(
        self, step: int, abstract_state: TrainState, data_iterator: Any = None
    ) -> TrainState:
        """Restores `step` onto the shardings in `abstract_state` (and positions the iterator)."""
        items = {
            "state": ocp.args.StandardRestore(flax.serialization.to_state_dict(abstract_state))
        }
        if data_iterator is not None:
            items["data_iterator"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = flax.serialization.from_state_dict(abstract_state, restored["state"])
        if data_iterator is not None:
            data_iterator.set_state(restored["data_iterator"])
        return state

    def resolve_step(self, step: int | None) -> int:
        """`step` if it has a checkpoint, the latest one when None; else FileNotFoundError
        naming the steps there are."""
        steps = sorted(self.all_steps())
        if not steps:
            raise FileNotFoundError(f"No checkpoints in {self.directory} yet.")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise FileNotFoundError(
                f"No checkpoint for step {step} in {self.directory}; available steps: {steps}."
            )
        return step

    def restore_params(self, step: int | None, abstract_params: Any) -> Any:
        """Restores only the params of `step` (None: the latest) onto `abstract_params`' shardings.

        The optimizer state is never read into memory, so fine-tuning can start a new optimizer
        and evaluation holds params alone.

        Raises:
          FileNotFoundError: no checkpoint at all, or none for `step` (the message lists them).
          ConfigError: the saved params do not fit `abstract_params` (another model shape).
        """
        step = self.resolve_step(step)
        self._check_param_shapes(step, abstract_params)
        item = {"params": abstract_params}
        restore_args = {"params": ocp.checkpoint_utils.construct_restore_args(abstract_params)}
        args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=args))
        except (ValueError, KeyError) as e:
            raise ConfigError(
                f"The params of {self.directory}/{step} do not fit this model ({e}). Use the "
                "model settings (and vocabulary) of the run that saved them."
            ) from e
        return restored["state"]["params"]

    def _check_param_shapes(self, step: int, abstract_params: Any) -> None:
        """ConfigError naming the params whose saved shapes differ from the model's, read from
        the checkpoint's metadata before any array is."""
        path = os.path.join(self.directory, str(step), "state")
        metadata = ocp.StandardCheckpointer().metadata(path)
        tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
        if not isinstance(tree, dict) or "params" not in tree:
            return  # Not our layout: the restore itself reports what it finds.
        saved, wanted = (
            {"/".join(path_names(p)): tuple(x.shape) for p, x in _flat_with_paths(t)}
            for t in (tree["params"], abstract_params)
        )
        problems = [
            f"{name}: saved {saved.get(name, 'nothing')}, model {shape}"
            for name, shape in wanted.items()
            if saved.get(name) != shape
        ] + [f"{name}: saved {shape}, not in the model" for name, shape in saved.items()
             if name not in wanted]
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ConfigError(
                f"The params of {self.directory}/{step} do not fit this model "
                f"({'; '.join(problems[:5])}{more}). Use the model settings (and vocabulary) of "
                "the run that saved them."
            )

    def wait_until_finished(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
