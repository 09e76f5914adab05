"""Training batches that depend only on (seed, step), whatever the number of processes.

The global batch of `batch_size` rows is made of `num_shards` fixed *logical shards*. Shard k
is its own deterministic pipeline (`pipeline.make_train_iterator`) over records
[k::num_shards], seeded from (seed, k), giving batch_size / num_shards rows per step; the
global batch is the shards' rows in shard order. A process runs the shards covering the rows
its devices hold (shards [p*K/P, (p+1)*K/P) of K for process p of P with the usual mesh) and
concatenates them, so any process count dividing K sees the same global batches.

`ShardedTrainIterator.get_state()` returns every shard's position as one JSON-able dict
(gathered from all processes, so every process must call it at the same time, as
`Checkpointer.save` does); `set_state()` takes the shards of this process from it, so a
checkpoint restores onto another process count. `num_shards=1` is the single pipeline of
earlier versions, whose saved iterator states it also accepts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from t5x_like import config as config_lib
from t5x_like.data import pipeline
from t5x_like.errors import ConfigError

STATE_FORMAT = "t5x_like.sharded_iterator.v1"
# Shard counts `num_shards=None` chooses among, largest first.
AUTO_NUM_SHARDS = (8, 4, 2, 1)


def auto_num_shards(batch_size: int) -> int:
    """The largest of AUTO_NUM_SHARDS dividing `batch_size`: a function of the batch alone, so
    the data order never depends on the host layout."""
    return next(k for k in AUTO_NUM_SHARDS if batch_size % k == 0)


def resolve_num_shards(cfg: Any, process_count: int = 1) -> int:
    """data.num_shards, the logical data shards of the training batch (None: the largest of
    AUTO_NUM_SHARDS dividing train.batch_size), checked against the batch size and the
    process count.

    Raises:
      ConfigError: naming data.num_shards and the change that fixes it.
    """
    batch_size = cfg.train.batch_size
    num_shards = cfg.data.num_shards
    if num_shards is None:
        num_shards = auto_num_shards(batch_size)
    config_lib.check_field("data.num_shards", num_shards)
    if batch_size % num_shards:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by data.num_shards={num_shards}: "
            "each logical data shard makes train.batch_size / data.num_shards rows per step. "
            "Use a batch size that is a multiple of data.num_shards, or fewer shards."
        )
    if num_shards % process_count:
        raise ConfigError(
            f"data.num_shards={num_shards} is not divisible by the {process_count} processes: "
            "each process runs data.num_shards / process_count whole shards. Set "
            f"data.num_shards to a multiple of {process_count} (it fixes the data order: "
            "resuming a run needs the value it was saved with)."
        )
    return num_shards


def shard_seed(seed: int, shard: int, num_shards: int) -> int:
    """Shard `shard`'s pipeline seed: `seed` itself with one shard (the order of earlier
    versions), else a hash of (seed, shard) below 2**31 (grain adds the epoch to it)."""
    if num_shards == 1:
        return seed
    return int(np.random.SeedSequence([seed, shard]).generate_state(1, np.uint32)[0] >> 1)


def shards_for_rows(num_shards: int, batch_size: int, start: int, stop: int) -> range:
    """The logical shards whose rows are global rows [start, stop) of the batch.

    Raises:
      ConfigError: the rows do not fall on shard boundaries (data.num_shards must be a
        multiple of the process count).
    """
    per_shard = batch_size // num_shards
    if start % per_shard or stop % per_shard or not 0 <= start < stop <= batch_size:
        raise ConfigError(
            f"This process holds rows [{start}, {stop}) of the global batch of {batch_size}, "
            f"which do not fall on the boundaries of data.num_shards={num_shards} shards of "
            f"{per_shard} rows: make data.num_shards a multiple of the process count."
        )
    return range(start // per_shard, stop // per_shard)


def process_rows(sharding: Any, batch_size: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows this process's devices hold under `sharding`
    (a batch sharding; rows of one process must be contiguous, as
    `jax.make_array_from_process_local_data` expects)."""
    index_map = sharding.addressable_devices_indices_map((batch_size, 1))
    rows = sorted({idx[0].indices(batch_size)[:2] for idx in index_map.values()})
    start, stop = rows[0][0], max(r[1] for r in rows)
    covered = sum(b - a for a, b in rows)
    if covered != stop - start:
        raise ConfigError(
            f"This process holds non-contiguous rows {rows} of the global batch: use a mesh "
            "whose 'data' and 'fsdp' axes give each process a contiguous block of devices."
        )
    return start, stop


def allgather_json(value: Any) -> list[Any]:
    """`value` of every process, in process order (a collective: all processes must call it)."""
    import jax

    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([len(data)], np.int32), tiled=True)
    # Pad to a power of two: the gather compiles once per length, not once per checkpoint.
    width = 1 << int(lengths.max() - 1).bit_length()
    padded = np.zeros(width, np.uint8)
    padded[: len(data)] = data
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(row[:n].tobytes()) for row, n in zip(gathered, lengths, strict=True)]


class ShardedTrainIterator:
    """This process's logical shards of the training batch, with a global iterator state."""

    def __init__(
        self,
        make_shard: Callable[[int], Any],
        num_shards: int,
        shards: Sequence[int],
        gather: Callable[[Any], list[Any]] = allgather_json,
    ):
        """`make_shard(k)`: shard k's batch iterator (a grain DatasetIterator). `shards`: the
        shards this process runs, in order. `gather`: all processes' values of its argument
        (a collective; the default gathers across jax processes)."""
        self.num_shards = num_shards
        self.shards = list(shards)
        self._iters = {k: make_shard(k) for k in self.shards}
        self._gather = gather

    def __iter__(self) -> ShardedTrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(self._iters[k]) for k in self.shards]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def local_state(self) -> dict[str, Any]:
        """This process's shards' positions: shard index (as a string) -> grain state."""
        return {str(k): self._iters[k].get_state() for k in self.shards}

    def get_state(self) -> dict[str, Any]:
        """Every shard's position (gathered from all processes): JSON-able, the same on every
        process. A collective: every process must call it at the same time."""
        return merge_states(self._gather(self.local_state()), self.num_shards)

    def set_state(self, state: dict[str, Any]) -> None:
        """Positions this process's shards from a `get_state()` of any process count.

        Raises:
          ConfigError: a state saved with another data.num_shards, or one from before
            logical shards that this shard count cannot continue.
        """
        if state.get("format") != STATE_FORMAT:
            self._set_legacy_state(state)
            return
        saved = state["num_shards"]
        if saved != self.num_shards:
            raise ConfigError(
                f"The checkpoint's data iterator has data.num_shards={saved} logical shards, "
                f"this run {self.num_shards}: resume with --config.data.num_shards={saved} "
                "(the shard count fixes the data order)."
            )
        for k in self.shards:
            self._iters[k].set_state(state["shards"][k])

    def _set_legacy_state(self, state: dict[str, Any]) -> None:
        """A single-pipeline state saved before logical shards: exactly shard 0 of 1."""
        if self.num_shards != 1:
            raise ConfigError(
                "The checkpoint's data iterator state predates logical data shards (one "
                "pipeline per process); resume it with --config.data.num_shards=1 on one "
                f"process, not data.num_shards={self.num_shards}."
            )
        self._iters[0].set_state(state)


def merge_states(local_states: Sequence[dict[str, Any]], num_shards: int) -> dict[str, Any]:
    """One global iterator state from every process's `local_state()`."""
    shards: dict[int, Any] = {}
    for local in local_states:
        shards.update({int(k): v for k, v in local.items()})
    if sorted(shards) != list(range(num_shards)):
        raise ValueError(
            f"The processes' iterator states cover shards {sorted(shards)}, not all "
            f"{num_shards}: every process must contribute its shards."
        )
    return {
        "format": STATE_FORMAT,
        "num_shards": num_shards,
        "shards": [shards[k] for k in range(num_shards)],
    }


def make_sharded_train_iterator(
    source: Sequence[Any],
    vocab: Any,
    *,
    batch_size: int,
    num_shards: int | None,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    rows: tuple[int, int] | None = None,
    gather: Callable[[Any], list[Any]] = allgather_json,
    **pipeline_kwargs: Any,
) -> ShardedTrainIterator:
    """This process's part of the global training batches, the same for any process count.

    Args:
      source: random-access records.
      vocab: the vocabulary (see `pipeline.make_train_iterator`).
      batch_size: the GLOBAL batch size; a multiple of num_shards.
      num_shards: logical shards (None: `auto_num_shards(batch_size)`).
      seed: the run's seed; shard k's pipeline uses `shard_seed(seed, k, num_shards)`.
      process_index, process_count: this process holds rows
        [index * batch_size / count, (index + 1) * batch_size / count) unless `rows` is given.
      rows: [start, stop) of the global batch rows this process holds (`process_rows`).
      gather: the collective that gathers the processes' states (see ShardedTrainIterator).
      **pipeline_kwargs: passed to `pipeline.make_train_iterator` (task, pack, shuffle, ...).
    """
    if num_shards is None:
        num_shards = auto_num_shards(batch_size)
    if num_shards < 1 or batch_size % num_shards:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by data.num_shards={num_shards}: "
            "each logical shard makes the same number of rows."
        )
    if rows is None:
        if batch_size % process_count:
            raise ConfigError(
                f"train.batch_size={batch_size} is not divisible by the {process_count} processes."
            )
        per_process = batch_size // process_count
        rows = (process_index * per_process, (process_index + 1) * per_process)
    shards = shards_for_rows(num_shards, batch_size, *rows)
    if len(source) < num_shards:
        raise ValueError(
            f"The split has {len(source)} records, fewer than data.num_shards={num_shards}: "
            "lower data.num_shards."
        )

    def make_shard(k: int) -> Any:
        return pipeline.make_train_iterator(
            source,
            vocab,
            batch_size=batch_size // num_shards,
            seed=shard_seed(seed, k, num_shards),
            process_index=k,
            process_count=num_shards,
            **pipeline_kwargs,
        )

    return ShardedTrainIterator(make_shard, num_shards, shards, gather)
