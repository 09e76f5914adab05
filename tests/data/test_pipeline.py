"""grain pipelines: batch format, causal shift, determinism, checkpoints, sharding and eval."""

import collections
import itertools
import json

import numpy as np
import pytest
from conftest import TEST_VOCAB_SIZE

from t5x_like.data import corpus, pipeline, preprocessors, sources, vocab

SEQ_LEN = 32
BATCH = 4


@pytest.fixture(scope="module")
def corpus_vocab(corpus_dir) -> vocab.SentencePieceVocab:
    return vocab.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name=corpus.NAME, vocab_size=TEST_VOCAB_SIZE
    )


@pytest.fixture(scope="module")
def splits(corpus_dir) -> sources.DatasetSplits:
    return sources.prepare_dataset(corpus.NAME, corpus_dir)


def _records(texts) -> list[dict[str, bytes]]:
    return [{"text": t.encode()} for t in texts]


def _train(source, v, **kw):
    args = dict(seq_len=SEQ_LEN, batch_size=BATCH, seed=0)
    args.update(kw)
    return pipeline.make_train_iterator(source, v, **args)


def _eval(source, v, **kw):
    args = dict(seq_len=SEQ_LEN, batch_size=BATCH)
    args.update(kw)
    return pipeline.make_eval_iterator(source, v, **args)


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _check_batch(batch, batch_size=BATCH):
    """Keys, shapes and dtypes, and the causal-LM structure of every row."""
    assert set(batch) == set(pipeline.KEYS)
    for k in pipeline.KEYS:
        assert batch[k].shape == (batch_size, SEQ_LEN)
        assert batch[k].dtype == (np.float32 if k == "weights" else np.int32)
    np.testing.assert_array_equal(batch["weights"], (batch["segment_ids"] > 0).astype(np.float32))
    for row in range(batch_size):
        seg, pos = batch["segment_ids"][row], batch["positions"][row]
        inputs, targets = batch["inputs"][row], batch["targets"][row]
        assert not targets[seg == 0].any() and not inputs[seg == 0].any()
        assert (targets[seg > 0] > 0).all()  # Real targets are never the pad id.
        for s in np.unique(seg[seg > 0]):
            idx = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
            np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
            # Segment start: BOS 0. Within: inputs[t] == targets[t - 1].
            assert inputs[idx[0]] == 0
            np.testing.assert_array_equal(inputs[idx[1:]], targets[idx[:-1]])


def _row_texts(batches, v) -> list[str]:
    """Decoded targets of every row that has real tokens."""
    return [
        v.decode(row)
        for b in batches
        for row, w in zip(b["targets"], b["weights"], strict=True)
        if w.any()
    ]


@pytest.mark.parametrize("pack", [True, False])
def test_train_batches_have_the_documented_format(splits, corpus_vocab, pack):
    batches = list(itertools.islice(_train(splits["train"], corpus_vocab, pack=pack), 8))
    for batch in batches:
        _check_batch(batch)
    max_segments = max(b["segment_ids"].max() for b in batches)
    # Unpacked: one chunk per row. Packed: documents' short last chunks share rows.
    assert max_segments > 1 if pack else max_segments == 1


def test_train_is_deterministic_given_the_seed(splits, corpus_vocab):
    """Same seed, same batches; another seed, other batches."""
    first = list(itertools.islice(_train(splits["train"], corpus_vocab, seed=7), 5))
    again = list(itertools.islice(_train(splits["train"], corpus_vocab, seed=7), 5))
    other = list(itertools.islice(_train(splits["train"], corpus_vocab, seed=8), 5))
    _assert_batches_equal(first, again)
    assert any(
        not np.array_equal(a["targets"], b["targets"]) for a, b in zip(first, other, strict=True)
    )


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("skip", [0, 5, 23])
def test_train_state_restores_through_json(splits, corpus_vocab, pack, skip):
    """After k batches, a fresh iterator given the JSON-round-tripped state continues alike.

    23 batches of 4 rows pass the packer's first 64-row window, so its state is mid-window.
    """
    it = _train(splits["train"], corpus_vocab, pack=pack, seed=3)
    for _ in range(skip):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(6)]
    fresh = _train(splits["train"], corpus_vocab, pack=pack, seed=3)
    fresh.set_state(state)
    _assert_batches_equal([next(fresh) for _ in range(6)], expected)


def test_train_reads_records_in_order_without_shuffle(corpus_vocab):
    texts = [f"record number {i}" for i in range(8)]
    it = _train(
        _records(texts), corpus_vocab, batch_size=2, shuffle=False, pack=False, num_epochs=1
    )
    batches = list(it)
    assert len(batches) == 4
    assert _row_texts(batches, corpus_vocab) == texts


def test_train_reshuffles_every_epoch(corpus_vocab):
    """Each epoch is a permutation of the records; the two epochs' orders differ."""
    texts = [f"record number {i}" for i in range(8)]
    it = _train(_records(texts), corpus_vocab, batch_size=1, pack=False, num_epochs=2, seed=5)
    rows = _row_texts(list(it), corpus_vocab)
    assert len(rows) == 16
    assert sorted(rows[:8]) == sorted(rows[8:]) == sorted(texts)
    assert rows[:8] != rows[8:]


def test_train_finite_run_drops_only_the_last_partial_batch(corpus_vocab):
    texts = [f"record number {i}" for i in range(7)]
    batches = list(_train(_records(texts), corpus_vocab, batch_size=3, pack=False, num_epochs=1))
    assert len(batches) == 2  # 7 rows: two full batches of 3.
    for b in batches:
        _check_batch(b, batch_size=3)


def test_train_chunks_long_documents_instead_of_dropping_them(corpus_vocab):
    """A document longer than seq_len comes out, in order, as several rows."""
    text = " ".join(f"The function number {i} returns a list of strings." for i in range(20))
    ids = preprocessors.tokenize(text, corpus_vocab)
    assert len(ids) > 3 * SEQ_LEN
    batches = list(
        _train(
            _records([text]), corpus_vocab, batch_size=1, pack=False, shuffle=False, num_epochs=1
        )
    )
    assert len(batches) == -(-len(ids) // SEQ_LEN)
    got = np.concatenate([b["targets"][0][b["weights"][0] > 0] for b in batches])
    np.testing.assert_array_equal(got, ids)
    for b in batches:
        _check_batch(b, batch_size=1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_processes_read_disjoint_shards(corpus_vocab, shuffle):
    """With two processes, each reads every other record; together, all of them once."""
    texts = [f"record number {i}" for i in range(16)]
    for t in texts:
        assert corpus_vocab.decode(corpus_vocab.encode(t)) == t
    seen = []
    for p in range(2):
        it = _train(
            _records(texts),
            corpus_vocab,
            batch_size=2,
            pack=False,
            shuffle=shuffle,
            num_epochs=1,
            process_index=p,
            process_count=2,
        )
        rows = _row_texts(list(it), corpus_vocab)
        assert sorted(rows) == sorted(texts[p::2])
        if not shuffle:
            assert rows == texts[p::2]
        seen.append(set(rows))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(texts)


def test_shard_source_takes_every_count_th_record():
    source = list(range(10))
    assert list(pipeline.shard_source(source, 0, 3)) == [0, 3, 6, 9]
    assert list(pipeline.shard_source(source, 2, 3)) == [2, 5, 8]
    assert list(pipeline.shard_source(source, 0, 1)) == source


@pytest.mark.parametrize("index,count", [(-1, 2), (2, 2), (5, 2), (0, 0)])
def test_shard_source_rejects_invalid_process_index(index, count):
    with pytest.raises(ValueError, match=f"Invalid process_index={index} for {count} processes"):
        pipeline.shard_source(list(range(10)), index, count)


def test_shard_source_rejects_fewer_records_than_processes():
    with pytest.raises(ValueError, match="has 3 records, fewer than the 4 processes"):
        pipeline.shard_source([1, 2, 3], 0, 4)
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        _train(_records(["a", "b", "c"]), None, process_index=1, process_count=4)


def test_train_rejects_bad_seq_len_and_seed(corpus_vocab):
    records = _records(["some text"])
    with pytest.raises(ValueError, match="seq_len must be at least 2"):
        _train(records, corpus_vocab, seq_len=1)
    for seed in (-1, 2**32):
        with pytest.raises(ValueError, match="seed must be in"):
            _train(records, corpus_vocab, seed=seed)


@pytest.mark.parametrize("pack", [True, False])
def test_eval_is_a_finite_deterministic_pass(splits, corpus_vocab, pack):
    source = splits["validation"]
    first = list(_eval(source, corpus_vocab, pack=pack))
    second = list(_eval(source, corpus_vocab, pack=pack))
    assert first
    _assert_batches_equal(first, second)
    for batch in first:
        _check_batch(batch)


@pytest.mark.parametrize("pack", [True, False])
def test_eval_drops_no_token(splits, corpus_vocab, pack):
    """One pass holds every token of every record (with EOS), each exactly once."""
    source = splits["validation"]
    ids = [
        preprocessors.tokenize(sources.record_text(source[i]), corpus_vocab)
        for i in range(len(source))
    ]
    batches = list(_eval(source, corpus_vocab, pack=pack))
    real = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
    assert len(real) == sum(len(x) for x in ids)
    if pack:
        expected = collections.Counter(np.concatenate(ids).tolist())
        assert collections.Counter(real.tolist()) == expected
    else:
        # Unpacked rows come in record order, each record's chunks in order.
        np.testing.assert_array_equal(real, np.concatenate(ids))


def test_eval_pads_the_last_batch_with_zero_weight_rows(corpus_vocab):
    texts = [f"record number {i}" for i in range(5)]
    batches = list(_eval(_records(texts), corpus_vocab, pack=False))
    assert len(batches) == 2
    for b in batches:
        _check_batch(b)
    assert batches[0]["weights"].any(axis=1).all()  # 4 real rows, then 1 + 3 padding rows.
    last = batches[1]
    assert last["weights"][0].any()
    for k in pipeline.KEYS:
        assert not last[k][1:].any()
    assert _row_texts(batches, corpus_vocab) == texts


def test_eval_num_batches_limits_the_pass(splits, corpus_vocab):
    source = splits["validation"]
    full = list(_eval(source, corpus_vocab))
    assert len(full) > 3
    limited = list(_eval(source, corpus_vocab, num_batches=3))
    _assert_batches_equal(limited, full[:3])
    with pytest.raises(ValueError, match="num_batches must be None"):
        _eval(source, corpus_vocab, num_batches=0)


def test_eval_processes_yield_the_same_number_of_batches(corpus_vocab):
    """Uneven shards: the shorter one is topped up with all-zero batches; no token is lost."""
    long_text = " ".join(f"The module number {i} defines a class." for i in range(12))
    texts = [long_text if i % 2 == 0 else f"short record {i}" for i in range(6)]
    records = _records(texts)
    per_process = [
        list(_eval(records, corpus_vocab, pack=False, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1])
    # Process 0 holds the long documents: process 1 ends with padding batches.
    assert not per_process[1][-1]["weights"].any()
    for batches in per_process:
        for b in batches:
            _check_batch(b)
    total = sum(b["weights"].sum() for batches in per_process for b in batches)
    assert total == sum(len(preprocessors.tokenize(t, corpus_vocab)) for t in texts)
    assert _row_texts(per_process[1], corpus_vocab) == texts[1::2]

    # With num_batches, every process yields exactly that many.
    for p in range(2):
        it = _eval(
            records, corpus_vocab, pack=False, process_index=p, process_count=2, num_batches=2
        )
        assert len(list(it)) == 2


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_state_restores_through_json(splits, corpus_vocab, process_count):
    """An eval pass can be resumed mid-way from a JSON-round-tripped state."""
    source = splits["validation"]
    kw = dict(process_index=process_count - 1, process_count=process_count)
    it = _eval(source, corpus_vocab, **kw)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    rest = list(it)
    assert rest
    fresh = _eval(source, corpus_vocab, **kw)
    fresh.set_state(state)
    _assert_batches_equal(list(fresh), rest)
