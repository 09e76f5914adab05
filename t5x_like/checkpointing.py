"""Orbax checkpoints of the training state and the data-iterator position.

A checkpoint `<workdir>/checkpoints/<step>/` holds `state` (params, optimizer state, step, RNG)
and `data_iterator` (the grain iterator's JSON state), so a resumed run continues exactly where
the saved one was. Restoring takes abstract arrays with shardings, so a checkpoint lands directly
on whatever mesh the restoring run has.

Faults the writer handles, so that nothing trained is lost:
- a save that crashed midway leaves `<step>.orbax-checkpoint-tmp*`, which Orbax ignores when
  listing steps; the writer removes them on start (Orbax's `cleanup_tmp_directories`, off by
  default in 0.12.8) and logs them;
- an unreadable newest checkpoint (garbled or truncated files, missing items) is moved aside to
  `<step>.corrupt-<time>` (Orbax ignores that name; nothing is deleted) and the newest readable
  one is restored (`restore_latest`); moving it aside also keeps Orbax from skipping every save
  up to that step and from pruning the good checkpoints;
- an async save that fails in the background is raised as `CheckpointSaveError` by the next
  `check_for_errors` / `save` / `wait_until_finished`, naming the step, the directory and the
  step a relaunch resumes from;
- damaged bytes that still decode: each checkpoint carries an `integrity` item, the checksums
  of every array and of the iterator state (t5x_like/checksums.py), verified after every
  restore; a mismatch is treated as an unreadable checkpoint (moved aside, the one before used);
- a state holding NaN or Inf is never saved: the same pass that computes the checksums checks
  every floating-point array, and `save` raises `NonFiniteError` instead of writing it;
- a restored state whose first step is not finite: the trainer tries the checkpoint before
  (`restore_latest(below=...)`) and moves the suspect one aside (`move_aside`) only once the older
  one trains.

A checkpoint also holds `unlogged_metrics`, the host metrics of the steps since the last log line,
so that the interval a resumed run logs covers the same steps as an uninterrupted run's.
"""

from __future__ import annotations

import time
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from t5x_like import checksums, log_setup, storage
from t5x_like.collectives import any_process
from t5x_like.errors import ConfigError
from t5x_like.partitioning import path_names
from t5x_like.training.nan_guard import NonFiniteError
from t5x_like.training.train_state import TrainState

_ITEMS = ("state", "data_iterator", "integrity", "unlogged_metrics")


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying the target shardings."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def _flat_with_paths(tree: Any) -> list[tuple[Any, Any]]:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _shape_problems(saved_tree: Any, wanted_tree: Any) -> list[str]:
    """'name: saved A, model B' for each leaf whose saved shape differs or is missing."""
    saved, wanted = (
        {"/".join(path_names(p)): tuple(x.shape) for p, x in _flat_with_paths(t)}
        for t in (saved_tree, wanted_tree)
    )
    return [
        f"{name}: saved {saved.get(name, 'nothing')}, model {shape}"
        for name, shape in wanted.items()
        if saved.get(name) != shape
    ] + [
        f"{name}: saved {shape}, not in the model"
        for name, shape in saved.items()
        if name not in wanted
    ]


def _json_records(records: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """(step, metrics) pairs as JSON-safe records (plain floats; non-finite entries dropped,
    as the interval means leave them out)."""
    out = []
    for step, metrics in records:
        values = {k: float(v) for k, v in metrics.items()}
        if all(v == v and abs(v) != float("inf") for v in values.values()):
            out.append({"step": int(step), "metrics": values})
    return {"records": out}


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """'/'-joined names -> the nested dict they name."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def _saved_tree(item_dir: str) -> Any:
    """The saved pytree's metadata (shapes, dtypes) of a checkpoint item directory, read by
    the item's handler: a Checkpointer would also look for step metadata in the item directory,
    where Orbax never writes any, and warn "Metadata file does not exist"."""
    return getattr(ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir)), "tree", None)


def _summarize(problems: list[str]) -> str:
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    return f"{'; '.join(problems[:5])}{more}"


class CheckpointSaveError(RuntimeError):
    """A checkpoint save failed (often in the background): the run cannot go on safely."""


class CorruptCheckpointError(RuntimeError):
    """No checkpoint in the directory can be read."""


# Errors that say nothing about the checkpoint itself: never a reason to move one aside.
_NOT_CORRUPTION = (MemoryError, ConfigError)


def _says_nothing_about_the_checkpoint(error: Exception) -> bool:
    return isinstance(error, _NOT_CORRUPTION) or "RESOURCE_EXHAUSTED" in str(error)


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
        self.directory = storage.resolve(directory)
        if storage.scheme(self.directory) == "s3":
            storage.install_orbax_s3_adapter()
        self._pending: int | None = None  # Step of the save that may still be running.
        self._failed = False  # A save error was raised already (close must not raise it).
        if not read_only:
            self._log_unfinished_saves()
        # Orbax warns when read_only overrides these; pass what read_only implies.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else save_interval_steps,
            enable_async_checkpointing=async_save and not read_only,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            # s3:// cannot rename a temporary directory: commit-file protocol there.
            atomicity_options=storage.atomicity_options(self.directory),
        )
        # Read-only is what a reader asks for; Orbax warns about it all the same.
        with log_setup.without_message("Given directory is read only"):
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                item_names=_ITEMS,
            )

    def _log_unfinished_saves(self) -> None:
        """Logs the tmp dirs of saves that never committed; Orbax removes them on start."""
        if jax.process_index() != 0:
            return
        leftovers = storage.glob_names(self.directory, "*.orbax-checkpoint-tmp*")
        if leftovers:
            logging.warning(
                "Removing %d unfinished checkpoint save(s) left by an interrupted run: %s.",
                len(leftovers),
                ", ".join(leftovers),
            )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self,
        step: int,
        state: TrainState,
        data_iterator: Any = None,
        force: bool = False,
        unlogged_metrics: list[tuple[int, dict[str, float]]] | None = None,
    ) -> bool:
        """Starts an (async) save of `state` at `step`; returns whether a save was started.

        `unlogged_metrics`: (step, host metrics) of the steps not logged yet, saved with the
        state so that a resumed run's next log interval covers them. Steps that already have
        a checkpoint are never overwritten.
        """
        # The previous async save must have succeeded before this one counts on it (Orbax
        # would raise its error from inside save(), attributed to the wrong step).
        self._finish_pending(block=True)
        if step in self._manager.all_steps():
            return False
        state_dict = flax.serialization.to_state_dict(state)
        sums, not_finite = checksums.state_checksums(state_dict)
        if not_finite:
            raise self._non_finite_error(step, not_finite)
        items = {"state": ocp.args.StandardSave(state_dict)}
        integrity: dict[str, Any] = {"state": sums}
        if data_iterator is not None:
            iterator_state = data_iterator.get_state()
            items["data_iterator"] = ocp.args.JsonSave(iterator_state)
            integrity["data_iterator"] = checksums.json_checksum(iterator_state)
        if unlogged_metrics is not None:
            records = _json_records(unlogged_metrics)
            items["unlogged_metrics"] = ocp.args.JsonSave(records)
            integrity["unlogged_metrics"] = checksums.json_checksum(records)
        items["integrity"] = ocp.args.JsonSave(integrity)
        try:
            started = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001 - any failure to write is reported alike.
            raise self._save_error(step, e) from e
        if started:
            self._pending = step
        return started

    def _resume_point(self) -> str:
        latest = self._manager.latest_step()
        return f"step {latest}" if latest is not None else "scratch (no checkpoint yet)"

    def _non_finite_error(self, step: int, names: list[str]) -> NonFiniteError:
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return NonFiniteError(
            f"Step {step}: the state to be checkpointed holds NaN or Inf ({listed}), so it was "
            f"not saved. Lower optimizer.learning_rate (or check the optimizer settings) and "
            f"relaunch: training resumes from {self._resume_point()}."
        )

    def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:
        self._failed = True
        self._manager.reload()  # The failed step is not a checkpoint.
        return CheckpointSaveError(
            f"Checkpoint save of step {step} to {self.directory} failed: "
            f"{type(error).__name__}: {error}. Free disk space / check the permissions of "
            f"{self.directory} and relaunch: training resumes from {self._resume_point()}."
        )

    def _finish_pending(self, block: bool) -> None:
        """Raises CheckpointSaveError if the pending save failed; `block`: wait for it."""
        if self._pending is None:
            return
        if not block and self._manager.is_saving_in_progress():
            return
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - Orbax re-raises the writer thread's error.
            raise self._save_error(step, e) from e

    def check_for_errors(self) -> None:
        """Raises CheckpointSaveError when the last async save has failed; never blocks.

        Cheap enough for every step (a flag read). Single-process runs only: the processes of
        a multi-process run could see the background save end at different steps and then
        disagree on stopping, so there a failure surfaces at the next `save` (which all of
        them call at the same step) or at `close`.
        """
        if jax.process_count() == 1:
            self._finish_pending(block=False)

    def restore(
        self, step: int, abstract_state: TrainState, data_iterator: Any = None
    ) -> TrainState:
        """Restores `step` onto the shardings in `abstract_state` (and positions the iterator).

        Raises:
          ConfigError: the saved state does not fit `abstract_state` (another model/optimizer),
            found from the checkpoint's metadata before any array is read.
          CorruptCheckpointError: what was read differs from the checksums saved with it.
        """
        self._check_state_fits(step, abstract_state)
        items = {
            "state": ocp.args.StandardRestore(flax.serialization.to_state_dict(abstract_state))
        }
        if data_iterator is not None:
            items["data_iterator"] = ocp.args.JsonRestore()
        if self._has_integrity(step):
            items["integrity"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        self._verify(step, restored)
        state = flax.serialization.from_state_dict(abstract_state, restored["state"])
        if data_iterator is not None:
            data_iterator.set_state(restored["data_iterator"])
        return state

    def _has_item(self, step: int, item: str) -> bool:
        """Whether `step` holds `item` (checkpoints of older versions lack the newer items)."""
        return storage.isdir(storage.join(self.directory, str(step), item))

    def _has_integrity(self, step: int) -> bool:
        """Whether `step` carries checksums (checkpoints of older versions do not)."""
        return self._has_item(step, "integrity")

    def unlogged_metrics(self, step: int) -> list[tuple[int, dict[str, float]]]:
        """The (step, host metrics) saved with `step` that no log line had covered yet; empty
        for checkpoints saved without them.

        Raises:
          CorruptCheckpointError: they differ from the checksum saved with them.
        """
        if not self._has_item(step, "unlogged_metrics"):
            return []
        items = {"unlogged_metrics": ocp.args.JsonRestore()}
        if self._has_integrity(step):
            items["integrity"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        records = restored["unlogged_metrics"]
        saved = (restored.get("integrity") or {}).get("unlogged_metrics")
        if saved is not None and checksums.json_checksum(records) != saved:
            raise CorruptCheckpointError(
                f"checkpoint {self.directory}/{step}: its unlogged metrics do not match their "
                "checksum (damaged files)"
            )
        return [(int(r["step"]), dict(r["metrics"])) for r in records["records"]]

    def _verify(self, step: int, restored: Any) -> None:
        """CorruptCheckpointError when a restored item differs from its saved checksums."""
        saved = restored.get("integrity")
        if saved is None:
            return
        actual, _ = checksums.state_checksums(restored["state"])
        bad = checksums.mismatches(saved["state"], actual)
        iterator = restored.get("data_iterator")
        if iterator is not None and "data_iterator" in saved:
            if checksums.json_checksum(iterator) != saved["data_iterator"]:
                bad.append("data_iterator")
        if bad:
            raise CorruptCheckpointError(
                f"checkpoint {self.directory}/{step} does not match the checksums saved with "
                f"it: {_summarize(bad)} differ (damaged files)"
            )

    def _check_state_fits(self, step: int, abstract_state: TrainState) -> None:
        path = storage.join(self.directory, str(step), "state")
        tree = _saved_tree(path)
        if not isinstance(tree, dict):
            return  # Not our layout: the restore itself reports what it finds.
        problems = _shape_problems(tree, flax.serialization.to_state_dict(abstract_state))
        if problems:
            raise ConfigError(
                f"The checkpoint {self.directory}/{step} does not fit this run's model and "
                f"optimizer ({_summarize(problems)}). Resume with the config that saved it "
                f"(--config=configs/saved_run.py:<workdir>) or use a new --workdir."
            )

    def restore_latest(
        self, abstract_state: TrainState, data_iterator: Any = None, below: int | None = None
    ) -> tuple[int, TrainState] | None:
        """(step, state) of the newest readable checkpoint (older than `below` when given);
        None when there is none at all.

        Newer checkpoints that cannot be read are moved aside to `<step>.corrupt-<time>` with a
        warning naming them and the error. If none can be read, nothing is moved.

        Raises:
          CorruptCheckpointError: no checkpoint is readable (the message lists each error).
          ConfigError: a readable checkpoint does not fit `abstract_state`.
        """
        failures: list[tuple[int, str]] = []
        steps = [s for s in self.all_steps() if below is None or s < below]
        for step in sorted(steps, reverse=True):
            try:
                state = self.restore(step, abstract_state, data_iterator)
                error = None
            except Exception as e:  # noqa: BLE001 - whatever a damaged file makes Orbax raise.
                if _says_nothing_about_the_checkpoint(e):  # Out of memory, another model.
                    raise
                error = f"{type(e).__name__}: {str(e)[:300]}"
            # All processes must agree that the step is usable (multi-process runs).
            if not any_process(error is not None):
                self._move_aside(failures)
                return step, state
            error = error or "unreadable on another process"
            failures.append((step, error))
            logging.warning(
                "Checkpoint %s/%d is unreadable (%s); trying the one before.",
                self.directory,
                step,
                error,
            )
        if failures:
            raise CorruptCheckpointError(
                f"No checkpoint in {self.directory} can be restored: "
                + "; ".join(f"step {s}: {e}" for s, e in failures)
                + ". If they are damaged, move them out of the way (or use a new --workdir) to "
                "start afresh; nothing was moved or deleted."
            )
        return None

    def move_aside(self, step: int, reason: str) -> None:
        """Renames checkpoint `step` to `<step>.corrupt-<time>` (nothing is deleted), logging
        `reason`; Orbax no longer lists it, so the next save and resume do not count on it."""
        self._move_aside([(step, reason)])

    def _move_aside(self, failures: list[tuple[int, str]]) -> None:
        """Renames unreadable steps to `<step>.corrupt-<time>` (process 0), for inspection."""
        if not failures:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for step, error in failures:
            source = storage.join(self.directory, str(step))
            target = f"{source}.corrupt-{stamp}"
            if jax.process_index() == 0:
                storage.move(source, target)
            logging.warning(
                "Checkpoint %s is not usable (%s); moved it aside to %s and resuming from the "
                "newest usable checkpoint.",
                source,
                error,
                target,
            )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("t5x_like:checkpoints_moved_aside")
        self._manager.reload()

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
        state_args = ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True
        )
        args: dict[str, Any] = {"state": state_args}
        if self._has_integrity(step):
            args["integrity"] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except (ValueError, KeyError) as e:
            raise ConfigError(
                f"The params of {self.directory}/{step} do not fit this model ({e}). Use the "
                "model settings (and vocabulary) of the run that saved them."
            ) from e
        self._verify(step, restored)
        return restored["state"]["params"]

    def restore_shared_params(
        self, step: int | None, abstract_params: Any
    ) -> tuple[dict[str, Any], list[str], list[str]]:
        """Restores the params of `step` (None: the latest) that `abstract_params` also has,
        onto their shardings; fine-tuning loads a pretrained encoder under a new head.

        Returns:
          (restored: '/'-joined param name -> array, the names loaded, the model's names the
          checkpoint lacks (to initialise fresh)). Saved params the model lacks (another head)
          are not read.

        Raises:
          ConfigError: a param both have whose shapes differ (naming it and both shapes).
        """
        step = self.resolve_step(step)
        tree = _saved_tree(storage.join(self.directory, str(step), "state"))
        saved_params = tree["params"] if isinstance(tree, dict) and "params" in tree else {}
        saved = {"/".join(path_names(p)): tuple(x.shape) for p, x in _flat_with_paths(saved_params)}
        wanted = {"/".join(path_names(p)): x for p, x in _flat_with_paths(abstract_params)}
        differ = [
            f"{name}: saved {saved[name]}, model {tuple(x.shape)}"
            for name, x in wanted.items()
            if name in saved and saved[name] != tuple(x.shape)
        ]
        if differ:
            raise ConfigError(
                f"The params of {self.directory}/{step} do not fit this model "
                f"({_summarize(differ)}): use the model sizes and vocabulary of the run that "
                "saved them."
            )
        shared = {name: x for name, x in wanted.items() if name in saved}
        new = [name for name in wanted if name not in saved]
        if not shared:
            return {}, [], new
        item = {"params": _unflatten(shared)}
        restore_args = {"params": ocp.checkpoint_utils.construct_restore_args(item["params"])}
        args: dict[str, Any] = {
            "state": ocp.args.PyTreeRestore(
                item=item, restore_args=restore_args, partial_restore=True
            )
        }
        if self._has_integrity(step):
            args["integrity"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        self._verify(step, restored)
        params = restored["state"]["params"]
        flat = {"/".join(path_names(p)): x for p, x in _flat_with_paths(params)}
        return flat, sorted(flat), new

    def _check_param_shapes(self, step: int, abstract_params: Any) -> None:
        """ConfigError naming the params whose saved shapes differ from the model's, read from
        the checkpoint's metadata before any array is."""
        path = storage.join(self.directory, str(step), "state")
        tree = _saved_tree(path)
        if not isinstance(tree, dict) or "params" not in tree:
            return  # Not our layout: the restore itself reports what it finds.
        problems = _shape_problems(tree["params"], abstract_params)
        if problems:
            raise ConfigError(
                f"The params of {self.directory}/{step} do not fit this model "
                f"({_summarize(problems)}). Use the model settings (and vocabulary) of "
                "the run that saved them."
            )

    def wait_until_finished(self) -> None:
        """Blocks until pending async saves are on disk; CheckpointSaveError if one failed."""
        self._finish_pending(block=True)
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and closes; a failed save raises CheckpointSaveError, unless
        one was raised already (closing after that error must not mask it)."""
        try:
            self.wait_until_finished()
        except Exception:
            if not self._failed:
                raise
            logging.exception("Closing %s after a failed save.", self.directory)
        finally:
            self._manager.close()
