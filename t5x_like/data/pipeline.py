"""grain pipelines: a TFDS source -> per-process shard -> task rows -> numpy batches.

    shard [p::count] -> shuffle (seed, reshuffled per epoch) -> repeat -> tokenize
      -> task examples -> pack (or pad) to the row lengths -> batch

The task (`tasks.Task`; causal LM when none is given) decides the examples and the rows:

  causal_lm        chunks of <= seq_len tokens (with the document's EOS), shifted inputs.
                   Batches of [batch_size, seq_len]: `KEYS` = inputs, targets, segment_ids,
                   positions (int32), weights (float32).
  span_corruption  documents (no EOS) cut into chunks of `random_spans_helper(inputs_len)[0]`
                   tokens, each corrupted T5-style (`span_corruption.py`).
  prefix_lm        documents (no EOS) cut into chunks of min(inputs_len + 1, targets_len)
                   tokens, each split at a random point (`preprocessors.prefix_lm_example`).
  seq2seq          one example per record from its inputs_key / targets_key features.
                   Encoder-decoder batches: `ENCDEC_KEYS` (`packing.py`), [batch_size,
                   inputs_len] for the encoder_* keys, [batch_size, targets_len] for the rest.
  mlm              masked-LM (BERT) rows of seq_len (`mlm.py`): [CLS] chunk [SEP] or sentence
                   pairs, 15% of the tokens selected; `mlm.ROW_KEYS` (+ nsp_label [B, 1]).
  sft              one example per prompt/completion record (`sft.py`): `KEYS` rows of
                   seq_len whose weights cover the completion (and its EOS) only.
  classification, token_classification, question_answering
                   encoder-only fine-tuning rows of seq_len (`finetune.py`) from labelled
                   examples with label ids (`finetune.load_split(...).encoded()`), one padded
                   row each (a QA example: one per window); never packed.

Randomised tasks draw from a seed per document (grain's random map over the record stream, see
`preprocessors.SeedDocument`), so batches depend only on the arguments. The train iterator is a
grain DatasetIterator: `get_state()` is JSON-serialisable and `set_state()` on a fresh iterator
built with the same arguments continues with exactly the same batches.

Training runs one such pipeline per logical data shard (`sharded_iterator.py`: shard k of K is
`make_train_iterator(..., process_index=k, process_count=K)`), so the global batches do not
depend on the number of processes; eval pipelines shard by process.
"""

import functools
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from t5x_like.data import finetune, mlm, packing, preprocessors, sft, span_corruption, tokenizers
from t5x_like.data.tasks import Task

KEYS = packing.KEYS
ENCDEC_KEYS = packing.ENCDEC_KEYS
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


def resolve_task(task: Task | None, seq_len: int | None, text_key: str | None) -> Task:
    """`task`, or the causal-LM task of `seq_len` and `text_key` (the pre-Task arguments).

    With a task, `seq_len` and `text_key` may be left out or repeat the task's own values.
    """
    if task is None:
        if seq_len is None:
            raise ValueError("Give either task= or seq_len= (a causal-LM pipeline).")
        return Task("causal_lm", seq_len=seq_len, text_key=text_key or "text")
    for name, value in (("seq_len", seq_len), ("text_key", text_key)):
        if value is not None and value != getattr(task, name):
            raise ValueError(
                f"{name}={value!r} disagrees with the task's {name}={getattr(task, name)!r}; "
                "with task= set it in the Task only."
            )
    return task


def batch_shapes(task: Task, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Key -> (shape, dtype) of the batches the pipelines make for `task`."""
    return {
        k: ((batch_size, n), np.dtype(np.float32 if k == "weights" else np.int32))
        for k, n in task.features.items()
    }


def _check_sentinels(task: Task, vocab: Any) -> None:
    needed = task.max_noise_spans
    have = getattr(vocab, "extra_ids", 0)
    if have < needed:
        raise ValueError(
            f"Span corruption with data.inputs_len={task.inputs_len} makes up to {needed} noise "
            f"spans per example, each needing a sentinel, but the vocabulary has {have} extra "
            f"ids: load it with extra_ids >= {needed} (T5 uses 100)."
        )


def _examples(docs: grain.MapDataset, vocab: Any, task: Task, seed: int) -> grain.IterDataset:
    """Records -> the task's variable-length {"inputs", "targets"} examples."""
    if task.name == "seq2seq":
        make = preprocessors.Seq2SeqExample(
            vocab,
            inputs_key=task.inputs_key,
            targets_key=task.targets_key,
            inputs_len=task.inputs_len,
            targets_len=task.targets_len,
            inputs_prefix=task.inputs_prefix,
        )
        return docs.map(make).to_iter_dataset(_READ_OPTIONS)
    if task.name == "mlm":
        return mlm.examples(docs, vocab, task, seed, _READ_OPTIONS)
    if task.name == "sft":
        return sft.examples(docs, vocab, task, _READ_OPTIONS)
    if task.name in finetune.TASK_KINDS:
        return finetune.examples(docs, vocab, task, _READ_OPTIONS)
    if task.name == "causal_lm":
        tokens = docs.map(preprocessors.TokenizeText(vocab, task.text_key))
        # Rows start with the tokenizer's BOS where it has one (imported models), else pad 0.
        (start_id,) = tokenizers.start_ids(vocab, fallback=preprocessors.BOS_ID)
        chunks = preprocessors.CausalLMChunks(task.seq_len, start_id)
    else:
        # LM objectives on raw text: chunks carry no document EOS (targets get their own).
        tokens = docs.map(preprocessors.TokenizeText(vocab, task.text_key, add_eos=False))
        # Indexed by position in the (shuffled, repeated) stream: the seed of each document.
        tokens = tokens.random_map(preprocessors.SeedDocument(), seed=seed)
        if task.name == "span_corruption":
            _check_sentinels(task, vocab)
            chunks = span_corruption.SpanCorruptionChunks(
                vocab, task.span_lengths[0], task.noise_density, task.mean_noise_span_length
            )
        else:
            chunks = preprocessors.PrefixLMChunks(vocab.eos_id, task.inputs_len, task.targets_len)
    # A flat map over an IterDataset: a document may yield any number of chunks.
    return grain.experimental.FlatMapIterDataset(tokens.to_iter_dataset(_READ_OPTIONS), chunks)


def _rows(
    docs: grain.MapDataset,
    vocab: Any,
    task: Task,
    *,
    pack: bool,
    num_packing_bins: int,
    shuffle_bins: bool,
    seed: int,
) -> grain.IterDataset:
    """Records -> task examples -> rows of the task's lengths (packed or padded)."""
    examples = _examples(docs, vocab, task, seed)
    kwargs = dict(
        pack_examples=pack, num_packing_bins=num_packing_bins, shuffle_bins=shuffle_bins, seed=seed
    )
    return task.to_rows(examples, **kwargs)


def _prefetch(ds: grain.IterDataset, worker_count: int) -> grain.IterDataset:
    if worker_count > 0:
        return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds


def make_train_iterator(
    source: Sequence[Any],
    vocab: Any,
    *,
    seq_len: int | None = None,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    pack: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    num_packing_bins: int | None = None,
    worker_count: int = 0,
    text_key: str | None = None,
    task: Task | None = None,
) -> grain.DatasetIterator:
    """An iterator of training batches for this process, deterministic given its arguments.

    Args:
      source: random-access records (a `sources.prepare_dataset(...)[split]`).
      vocab: a `vocab.SentencePieceVocab` (anything with encode() and eos_id; span corruption
        also needs extra_ids and extra_id(i)).
      seq_len: tokens per causal-LM row when no `task` is given; longer documents are split
        into chunks, never dropped.
      batch_size: rows per batch on this process (the global batch / process_count).
      seed: shuffling seed (epoch e is shuffled with seed + e); also seeds the randomised
        tasks' per-document draws.
      shuffle: shuffle the records (and the emission order of packed rows).
      pack: pack several examples per row; if False, each example is padded alone.
      process_index, process_count: this process reads records [process_index::process_count].
      num_epochs: passes over the shard; None repeats forever. The last partial batch of a
        finite run is dropped.
      num_packing_bins: rows packed at once (default DEFAULT_PACKING_BINS).
      worker_count: grain worker processes (0: all in this process). Changing it changes the
        batches when packing (grain slices the work per worker).
      text_key: the records' text feature when no `task` is given (default "text").
      task: what to make of the records and the row layout (see the module docstring); None
        is the causal LM of `seq_len` and `text_key`.
    """
    task = resolve_task(task, seq_len, text_key)
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
        task,
        pack=pack,
        num_packing_bins=num_packing_bins or DEFAULT_PACKING_BINS,
        shuffle_bins=shuffle,
        seed=seed,
    )
    batches = rows.batch(batch_size, drop_remainder=True)
    return iter(_prefetch(batches, worker_count))


def zero_batch(task: Task, batch_size: int) -> dict[str, np.ndarray]:
    """An all-padding batch (weights 0) of `task`'s keys, shapes and dtypes."""
    return {
        k: np.zeros(shape, dtype) for k, (shape, dtype) in batch_shapes(task, batch_size).items()
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
    task: Task,
    *,
    batch_size: int,
    pack: bool,
    process_index: int,
    process_count: int,
    num_packing_bins: int,
) -> grain.IterDataset:
    docs = shard_source(source, process_index, process_count)
    # Seed 0: randomised tasks corrupt / split each record the same way in every eval pass.
    rows = _rows(
        docs, vocab, task, pack=pack, num_packing_bins=num_packing_bins, shuffle_bins=False, seed=0
    )
    # The last partial batch is filled with all-zero rows (weights 0) rather than dropped.
    pad_batch = functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
    return rows.batch(batch_size, batch_fn=pad_batch)


def make_eval_iterator(
    source: Sequence[Any],
    vocab: Any,
    *,
    seq_len: int | None = None,
    batch_size: int,
    pack: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_batches: int | None = None,
    num_packing_bins: int | None = None,
    worker_count: int = 0,
    text_key: str | None = None,
    task: Task | None = None,
) -> grain.DatasetIterator:
    """One deterministic pass over this process's shard of `source`, in record order.

    Same batches as `make_train_iterator` (keys, shapes, dtypes) for the same `task` (or
    `seq_len` and `text_key`); randomised tasks draw with seed 0, so every pass is the same.
    The last partial batch is padded with all-zero rows (weights 0). Stops after `num_batches`
    batches if given.

    With process_count > 1, every process yields the same number of batches (a jitted step
    over a global batch needs all of them), topping up with all-zero batches: `num_batches`
    when given, else the largest shard's batch count, which costs every process one extra
    tokenising pass over the whole split to compute.
    """
    task = resolve_task(task, seq_len, text_key)
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be None (the whole split) or >= 1, got {num_batches}.")
    kwargs = dict(
        batch_size=batch_size,
        pack=pack,
        process_count=process_count,
        num_packing_bins=num_packing_bins or DEFAULT_PACKING_BINS,
    )
    batches = _eval_batches(source, vocab, task, process_index=process_index, **kwargs)
    if process_count > 1:
        if num_batches is None:
            num_batches = max(
                sum(1 for _ in _eval_batches(source, vocab, task, process_index=p, **kwargs))
                for p in range(process_count)
            )
        batches = _PadToCountIterDataset(batches, num_batches, zero_batch(task, batch_size))
    elif num_batches is not None:
        batches = grain.experimental.LimitIterDataset(batches, num_batches)
    return iter(_prefetch(batches, worker_count))
