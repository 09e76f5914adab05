"""Logical data shards: global batches and iterator states independent of the process count."""

import hashlib
import json

import jax
import numpy as np
import pytest
from conftest import TEST_VOCAB_SIZE
from jax.sharding import NamedSharding, PartitionSpec
from testutil import load_config, tiny_config

from t5x_like import config as config_lib
from t5x_like.data import corpus, pipeline, sharded_iterator, sources, vocab
from t5x_like.errors import ConfigError
from t5x_like.experiment import validation

SEQ_LEN = 32
BATCH = 8  # Global rows per step.
SHARDS = 4


@pytest.fixture(scope="module")
def corpus_vocab(corpus_dir) -> vocab.SentencePieceVocab:
    return vocab.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name=corpus.NAME, vocab_size=TEST_VOCAB_SIZE
    )


@pytest.fixture(scope="module")
def train_split(corpus_dir):
    return sources.prepare_dataset(corpus.NAME, corpus_dir)["train"]


def _process_iterators(source, v, process_count, num_shards=SHARDS, **kw):
    """The iterators of every process of a `process_count`-process job, in process order."""
    return [
        sharded_iterator.make_sharded_train_iterator(
            source,
            v,
            batch_size=BATCH,
            num_shards=num_shards,
            seed=5,
            seq_len=SEQ_LEN,
            process_index=p,
            process_count=process_count,
            # Only one process exists here: a real gather would return this process's shards.
            gather=lambda local: [local],
            **kw,
        )
        for p in range(process_count)
    ]


def _global_batches(iterators, steps):
    """`steps` global batches: each process's rows, concatenated in process order."""
    out = []
    for _ in range(steps):
        parts = [next(it) for it in iterators]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def _hash(batch) -> str:
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode() + np.ascontiguousarray(batch[k]).tobytes())
    return h.hexdigest()


def _global_state(iterators) -> dict:
    """The state a checkpoint holds: every process's shards merged, through JSON."""
    merged = sharded_iterator.merge_states([it.local_state() for it in iterators], SHARDS)
    return json.loads(json.dumps(merged))


def test_global_batches_do_not_depend_on_the_process_count(train_split, corpus_vocab):
    """P = 1, 2, 4 processes over 4 shards: the same global batches, batch for batch."""
    steps = 4
    reference = [
        _hash(b) for b in _global_batches(_process_iterators(train_split, corpus_vocab, 1), steps)
    ]
    assert len(set(reference)) == steps  # Real, changing data.
    for process_count in (2, 4):
        iterators = _process_iterators(train_split, corpus_vocab, process_count)
        assert [it.shards for it in iterators] == [
            list(range(p * SHARDS // process_count, (p + 1) * SHARDS // process_count))
            for p in range(process_count)
        ]
        batches = _global_batches(iterators, steps)
        assert [_hash(b) for b in batches] == reference, process_count
        assert batches[0]["inputs"].shape == (BATCH, SEQ_LEN)


def test_shards_read_their_own_records_with_their_own_seeds(train_split, corpus_vocab):
    """Shard k is the plain pipeline over records [k::K] with seed shard_seed(seed, k, K)."""
    (it,) = _process_iterators(train_split, corpus_vocab, 1)
    batch = next(it)
    seeds = {sharded_iterator.shard_seed(5, k, SHARDS) for k in range(SHARDS)}
    assert len(seeds) == SHARDS and all(0 <= s < 2**31 for s in seeds)
    per_shard = BATCH // SHARDS
    for k in range(SHARDS):
        alone = pipeline.make_train_iterator(
            train_split,
            corpus_vocab,
            seq_len=SEQ_LEN,
            batch_size=per_shard,
            seed=sharded_iterator.shard_seed(5, k, SHARDS),
            process_index=k,
            process_count=SHARDS,
        )
        expected = next(alone)
        for key in expected:
            np.testing.assert_array_equal(
                batch[key][k * per_shard : (k + 1) * per_shard], expected[key]
            )


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 4), (4, 1)])
def test_state_restores_onto_another_process_count(train_split, corpus_vocab, before, after):
    """Save after 3 steps with `before` processes, resume with `after`: the global batches
    after the resume equal those of an uninterrupted single-process run."""
    uninterrupted = [
        _hash(b) for b in _global_batches(_process_iterators(train_split, corpus_vocab, 1), 6)
    ]
    saved = _process_iterators(train_split, corpus_vocab, before)
    assert [_hash(b) for b in _global_batches(saved, 3)] == uninterrupted[:3]
    state = _global_state(saved)
    assert state["format"] == sharded_iterator.STATE_FORMAT
    assert state["num_shards"] == SHARDS and len(state["shards"]) == SHARDS

    resumed = _process_iterators(train_split, corpus_vocab, after)
    for it in resumed:
        it.set_state(state)
    assert [_hash(b) for b in _global_batches(resumed, 3)] == uninterrupted[3:]


def test_get_state_is_global_and_round_trips(train_split, corpus_vocab):
    (it,) = _process_iterators(train_split, corpus_vocab, 1)
    for _ in range(2):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # Default gather: this one process.
    expected = [_hash(next(it)) for _ in range(2)]
    (fresh,) = _process_iterators(train_split, corpus_vocab, 1)
    fresh.set_state(state)
    assert [_hash(next(fresh)) for _ in range(2)] == expected


def test_get_state_needs_every_shard(train_split, corpus_vocab):
    """A process's own shards alone are not a checkpointable state."""
    first, _ = _process_iterators(train_split, corpus_vocab, 2)
    with pytest.raises(ValueError, match=r"cover shards \[0, 1\], not all 4"):
        first.get_state()


def test_state_of_another_shard_count_is_a_config_error(train_split, corpus_vocab):
    (four,) = _process_iterators(train_split, corpus_vocab, 1)
    (two,) = _process_iterators(train_split, corpus_vocab, 1, num_shards=2)
    with pytest.raises(ConfigError, match=r"data.num_shards=4 .* --config.data.num_shards=4"):
        two.set_state(four.get_state())


def test_legacy_single_pipeline_state(train_split, corpus_vocab):
    """A pre-shard checkpoint (one grain iterator's state) continues exactly with
    num_shards=1, which is that same pipeline; other shard counts reject it clearly."""
    legacy = pipeline.make_train_iterator(
        train_split, corpus_vocab, seq_len=SEQ_LEN, batch_size=BATCH, seed=5
    )
    next(legacy)
    state = json.loads(json.dumps(legacy.get_state()))
    expected = [_hash(next(legacy)) for _ in range(2)]
    (one,) = _process_iterators(train_split, corpus_vocab, 1, num_shards=1)
    one.set_state(state)
    assert [_hash(next(one)) for _ in range(2)] == expected
    (four,) = _process_iterators(train_split, corpus_vocab, 1)
    with pytest.raises(ConfigError, match=r"predates logical data shards.*num_shards=1"):
        four.set_state(state)


def test_rows_must_fall_on_shard_boundaries(corpus_vocab):
    records = [{"text": f"record {i}".encode()} for i in range(16)]
    with pytest.raises(ConfigError, match=r"rows \[2, 4\) .*num_shards=2 .*multiple of"):
        sharded_iterator.make_sharded_train_iterator(
            records,
            corpus_vocab,
            batch_size=8,
            num_shards=2,
            seed=0,
            seq_len=SEQ_LEN,
            process_index=1,
            process_count=4,
        )
    with pytest.raises(ConfigError, match=r"batch_size=8 is not divisible by data.num_shards=3"):
        sharded_iterator.make_sharded_train_iterator(
            records, corpus_vocab, batch_size=8, num_shards=3, seed=0, seq_len=SEQ_LEN
        )
    with pytest.raises(ValueError, match="3 records, fewer than data.num_shards=4"):
        sharded_iterator.make_sharded_train_iterator(
            records[:3], corpus_vocab, batch_size=8, num_shards=4, seed=0, seq_len=SEQ_LEN
        )


def test_process_rows_follow_the_batch_sharding():
    """One process holds every row; a sharding replicated over devices does too."""
    mesh = jax.make_mesh((8,), ("data",))
    assert sharded_iterator.process_rows(NamedSharding(mesh, PartitionSpec("data")), 16) == (0, 16)
    assert sharded_iterator.process_rows(NamedSharding(mesh, PartitionSpec()), 16) == (0, 16)
    assert list(sharded_iterator.shards_for_rows(8, 16, 4, 8)) == [2, 3]


@pytest.mark.parametrize(
    "batch_size,num_shards,processes,expected",
    [(16, None, 1, 8), (8, None, 2, 8), (12, None, 1, 4), (6, None, 2, 2), (8, 2, 2, 2)],
)
def test_num_shards_resolution(batch_size, num_shards, processes, expected):
    """None picks the largest of 8, 4, 2, 1 dividing the batch, whatever the process count."""
    cfg = tiny_config(**{"train.batch_size": batch_size, "data.num_shards": num_shards})
    assert sharded_iterator.resolve_num_shards(cfg, processes) == expected


@pytest.mark.parametrize(
    "overrides,processes,message",
    [
        ({"data.num_shards": 3}, 1, r"train.batch_size=8 is not divisible by data.num_shards=3"),
        ({"data.num_shards": 2}, 4, r"data.num_shards=2 is not divisible by the 4 processes"),
        ({"data.num_shards": 0}, 1, r"data.num_shards=0 must be a positive integer or None"),
    ],
)
def test_num_shards_validation_names_the_fields(overrides, processes, message):
    cfg = tiny_config(**overrides)
    with pytest.raises(ConfigError, match=message):
        validation.validate_config(cfg, 8, processes)


def test_configs_without_num_shards_pick_automatically(tmp_path):
    """A config.json saved before data.num_shards existed reloads with it unset (auto)."""
    saved = json.loads(config_lib.to_json(tiny_config()))
    del saved["data"]["num_shards"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = load_config("saved_run", str(tmp_path))
    assert cfg.data.num_shards is None
    assert sharded_iterator.resolve_num_shards(cfg, 1) == 8
