"""grain pipelines: a TFDS source -> per-process shard -> causal-LM rows -> numpy batches.

    shard [p::count] -> shuffle (seed, reshuffled per epoch) -> repeat -> tokenize
      -> chunks of <= seq_len -> pack (or pad) to seq_len -> batch

Batches are dicts of numpy arrays of shape [batch_size, seq_len] (`batch_size` per process):
`inputs`, `targets`, `segment_ids`, `positions` (int32) and `weights` (float32). The train
iterator is a grain DatasetIterator: `get_state()` is JSON-serialisable and `set_state()` on a
fresh iterator built with the same arguments continues with exactly the same batches.
"""

import functools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from t5x_like.data import packing, preprocessors

KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")
# Rows grain's packer fills at once when not told otherwise; more bins, less padding.
DEFAULT_PACKING_BINS = 64
# Tokenisation runs ahead of the packer in a few threads; more buys nothing on small hosts.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=64)


def shard_source(source: Sequence[Any], process_index: int, process_count: int) -> grain.MapDataset:
    """The records process `process_index` of `process_count` reads: every count-th one."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"Invalid process_index={process_index} for {process_count} processes.")
    if len(source) < process_count:
        raise ValueError(
            f"The split has {len(source)} records, fewer than the {process_count} processes "
            "reading it: some processes would get no data."
        )
    return grain.MapDataset.source(source)[process_index::process_count]


def _rows(
    docs: grain.MapDataset,
    vocab: Any,
    *,
    seq_len: int,
    pack: bool,
    num_packing_bins: int,
    shuffle_bins: bool,
    seed: int,
    text_key: str,
) -> grain.IterDataset:
    """Records -> token ids -> causal-LM chunks -> rows of seq_len (packed or padded)."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}.")
    tokens = docs.map(preprocessors.TokenizeText(vocab, text_key))
    # A flat map over an IterDataset: a document may yield any number of chunks.
    examples = grain.experimental.FlatMapIterDataset(
        tokens.to_iter_dataset(_READ_OPTIONS), preprocessors.CausalLMChunks(seq_len)
    )
    return packing.to_rows(
        examples,
        seq_len,
        pack_examples=pack,
        num_packing_bins=num_packing_bins,
        shuffle_bins=shuffle_bins,
        seed=seed,
    )


def _prefetch(ds: grain.IterDataset, worker_count: int) -> grain.IterDataset:
    if worker_count > 0:
        return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds


def make_train_iterator(
    source: Sequence[Any],
    vocab: Any,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    pack: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    num_packing_bins: int | None = None,
    worker_count: int = 0,
    text_key: str = "text",
) -> grain.DatasetIterator:
    """An iterator of training batches for this process, deterministic given its arguments.

    Args:
      source: random-access records (a `sources.prepare_dataset(...)[split]`).
      vocab: a `vocab.SentencePieceVocab` (anything with encode() and eos_id).
      seq_len: tokens per row; longer documents are split into chunks, never dropped.
      batch_size: rows per batch on this process (the global batch / process_count).
      seed: shuffling seed; epoch e is shuffled with seed + e.
      shuffle: shuffle the records (and the emission order of packed rows).
      pack: pack several chunks per row; if False, each chunk is padded alone.
      process_index, process_count: this process reads records [process_index::process_count].
      num_epochs: passes over the shard; None repeats forever. The last partial batch of a
        finite run is dropped.
      num_packing_bins: rows packed at once (default DEFAULT_PACKING_BINS).
      worker_count: grain worker processes (0: all in this process). Changing it changes the
        batches when packing (grain slices the work per worker).
      text_key: the records' text feature.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
    docs = shard_source(source, process_index, process_count)
    if shuffle:
        # Before repeat: grain's shuffle then uses seed + epoch for each pass.
        docs = docs.shuffle(seed=seed)
    docs = docs.repeat(num_epochs)
    rows = _rows(
        docs,
        vocab,
        seq_len=seq_len,
        pack=pack,
        num_packing_bins=num_packing_bins or DEFAULT_PACKING_BINS,
        shuffle_bins=shuffle,
        seed=seed,
        text_key=text_key,
    )
    batches = rows.batch(batch_size, drop_remainder=True)
    return iter(_prefetch(batches, worker_count))


def _zero_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
    return {
        k: np.zeros((batch_size, seq_len), np.float32 if k == "weights" else np.int32) for k in KEYS
    }


class _PadToCountDatasetIterator(grain.DatasetIterator):
    """Yields the parent's batches, then all-padding batches, exactly `count` in total."""

    def __init__(self, parent: grain.DatasetIterator, count: int, pad: dict[str, np.ndarray]):
        super().__init__(parent)
        self._count = count
        self._pad = pad
        self._emitted = 0
        self._exhausted = False

    def __next__(self) -> dict[str, np.ndarray]:
        if self._emitted >= self._count:
            raise StopIteration
        self._emitted += 1
        if not self._exhausted:
            try:
                return next(self._parent)
            except StopIteration:
                self._exhausted = True
        return {k: v.copy() for k, v in self._pad.items()}

    def get_state(self) -> dict[str, Any]:
        return {
            "parent": self._parent.get_state(),
            "emitted": self._emitted,
            "exhausted": self._exhausted,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._emitted = state["emitted"]
        self._exhausted = state["exhausted"]


class _PadToCountIterDataset(grain.IterDataset):
    """The parent's first `count` batches, topped up with all-padding batches to `count`."""

    def __init__(self, parent: grain.IterDataset, count: int, pad: dict[str, np.ndarray]):
        super().__init__(parent)
        self._count = count
        self._pad = pad

    def __iter__(self) -> grain.DatasetIterator:
        return _PadToCountDatasetIterator(self._parent.__iter__(), self._count, self._pad)


def _eval_batches(
    source: Sequence[Any],
    vocab: Any,
    *,
    seq_len: int,
    batch_size: int,
    pack: bool,
    process_index: int,
    process_count: int,
    num_packing_bins: int,
    text_key: str,
) -> grain.IterDataset:
    docs = shard_source(source, process_index, process_count)
    rows = _rows(
        docs,
        vocab,
        seq_len=seq_len,
        pack=pack,
        num_packing_bins=num_packing_bins,
        shuffle_bins=False,
        seed=0,
        text_key=text_key,
    )
    # The last partial batch is filled with all-zero rows (weights 0) rather than dropped.
    pad_batch = functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
    return rows.batch(batch_size, batch_fn=pad_batch)


def make_eval_iterator(
    source: Sequence[Any],
    vocab: Any,
    *,
    seq_len: int,
    batch_size: int,
    pack: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_batches: int | None = None,
    num_packing_bins: int | None = None,
    worker_count: int = 0,
    text_key: str = "text",
) -> grain.DatasetIterator:
    """One deterministic pass over this process's shard of `source`, in record order.

    Same batches as `make_train_iterator` (keys, shapes, dtypes); the last partial batch is
    padded with all-zero rows (weights 0). Stops after `num_batches` batches if given.

    With process_count > 1, every process yields the same number of batches (a jitted step
    over a global batch needs all of them), topping up with all-zero batches: `num_batches`
    when given, else the largest shard's batch count, which costs every process one extra
    tokenising pass over the whole split to compute.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be None (the whole split) or >= 1, got {num_batches}.")
    kwargs = dict(
        seq_len=seq_len,
        batch_size=batch_size,
        pack=pack,
        process_count=process_count,
        num_packing_bins=num_packing_bins or DEFAULT_PACKING_BINS,
        text_key=text_key,
    )
    batches = _eval_batches(source, vocab, process_index=process_index, **kwargs)
    if process_count > 1:
        if num_batches is None:
            num_batches = max(
                sum(1 for _ in _eval_batches(source, vocab, process_index=p, **kwargs))
                for p in range(process_count)
            )
        batches = _PadToCountIterDataset(batches, num_batches, _zero_batch(batch_size, seq_len))
    elif num_batches is not None:
        batches = grain.experimental.LimitIterDataset(batches, num_batches)
    return iter(_prefetch(batches, worker_count))
