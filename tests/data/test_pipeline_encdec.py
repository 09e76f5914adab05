"""Task-aware pipelines: encoder-decoder batches, determinism, checkpoints, shards and eval."""

import itertools
import json

import numpy as np
import pytest
from conftest import TEST_VOCAB_SIZE

from t5x_like.data import corpus, packing, pipeline, preprocessors, sources, vocab
from t5x_like.data import span_corruption as sc
from t5x_like.data.tasks import Task

BATCH = 4
SPAN = Task("span_corruption", inputs_len=48, targets_len=16)
PREFIX = Task("prefix_lm", inputs_len=24, targets_len=24)
SEQ2SEQ = Task(
    "seq2seq",
    inputs_len=32,
    targets_len=8,
    inputs_key="body",
    targets_key="title",
    inputs_prefix="t: ",
)
ENCDEC_TASKS = {"span_corruption": SPAN, "prefix_lm": PREFIX}


@pytest.fixture(scope="module")
def v(corpus_dir) -> vocab.SentencePieceVocab:
    """The test vocabulary with T5's 100 sentinels."""
    return vocab.load_or_train_vocab(
        None,
        data_dir=corpus_dir,
        dataset_name=corpus.NAME,
        vocab_size=TEST_VOCAB_SIZE,
        extra_ids=100,
    )


@pytest.fixture(scope="module")
def splits(corpus_dir) -> sources.DatasetSplits:
    return sources.prepare_dataset(corpus.NAME, corpus_dir)


def _records(texts) -> list[dict[str, bytes]]:
    return [{"text": t.encode()} for t in texts]


def _train(source, v, task, **kw):
    args = dict(batch_size=BATCH, seed=0, task=task)
    args.update(kw)
    return pipeline.make_train_iterator(source, v, **args)


def _eval(source, v, task, **kw):
    return pipeline.make_eval_iterator(source, v, batch_size=BATCH, task=task, **kw)


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _segments(batch, task, batch_size=BATCH):
    """Checks keys, shapes, dtypes and row structure; returns each row's (inputs, targets)."""
    shapes = pipeline.batch_shapes(task, batch_size)
    assert set(batch) == set(packing.ENCDEC_KEYS) == set(shapes)
    for k, (shape, dtype) in shapes.items():
        assert batch[k].shape == shape and batch[k].dtype == dtype
    rows = []
    for r in range(batch_size):
        enc_seg, dec_seg = batch["encoder_segment_ids"][r], batch["decoder_segment_ids"][r]
        assert enc_seg.max() == dec_seg.max()
        np.testing.assert_array_equal(batch["weights"][r], (dec_seg > 0).astype(np.float32))
        segs = []
        for s in range(1, int(dec_seg.max()) + 1):
            enc = batch["encoder_inputs"][r][enc_seg == s]
            tgt = batch["targets"][r][dec_seg == s]
            np.testing.assert_array_equal(batch["decoder_inputs"][r][dec_seg == s], [0, *tgt[:-1]])
            np.testing.assert_array_equal(
                batch["encoder_positions"][r][enc_seg == s], range(len(enc))
            )
            np.testing.assert_array_equal(
                batch["decoder_positions"][r][dec_seg == s], range(len(tgt))
            )
            assert tgt[-1] == 1  # Targets always end with EOS.
            segs.append((enc, tgt))
        rows.append(segs)
    return rows


def _span_texts(batches, v) -> list[str]:
    """Each example of span-corruption batches decoded back to its chunk's text."""
    return [
        v.decode(sc.decode_span_corruption(enc, tgt, v))
        for b in batches
        for row in _segments(b, SPAN, len(b["targets"]))
        for enc, tgt in row
    ]


@pytest.mark.parametrize("name", ["span_corruption", "prefix_lm"])
@pytest.mark.parametrize("pack", [True, False])
def test_lm_objective_batches_have_the_encdec_format(splits, v, name, pack):
    task = ENCDEC_TASKS[name]
    batches = list(itertools.islice(_train(splits["train"], v, task, pack=pack), 6))
    sentinels = {v.extra_id(i) for i in range(100)}
    full = 0
    for batch in batches:
        for row in _segments(batch, task):
            assert len(row) >= 1 and (len(row) == 1 or pack)
            for enc, tgt in row:
                if name == "span_corruption":
                    full += len(enc) == task.inputs_len
                    assert sentinels & set(enc.tolist()) or len(enc) <= 2
                    sc.decode_span_corruption(enc, tgt, v)  # Well formed.
                else:
                    assert 1 not in enc and not sentinels & set(enc.tolist())
    if name == "span_corruption":
        assert full > 0  # Whole chunks fill the encoder row exactly.


def test_span_corruption_rows_decode_to_the_documents(v):
    """In record order without packing, the rows' chunks decode back to every document."""
    texts = [
        " ".join(f"Function {i} number {j} returns a list." for j in range(12)) for i in range(3)
    ]
    batches = list(
        _train(_records(texts), v, SPAN, pack=False, shuffle=False, num_epochs=1, batch_size=1)
    )
    ids = [preprocessors.tokenize(t, v, add_eos=False) for t in texts]
    tokens_length = SPAN.span_lengths[0]
    assert len(batches) == sum(-(-len(x) // tokens_length) for x in ids)
    rebuilt = np.concatenate(
        [
            sc.decode_span_corruption(enc, tgt, v)
            for b in batches
            for row in _segments(b, SPAN, 1)
            for enc, tgt in row
        ]
    )
    np.testing.assert_array_equal(rebuilt, np.concatenate(ids))
    assert v.decode(rebuilt) == v.decode(np.concatenate(ids))


def test_each_epoch_corrupts_a_document_anew(v):
    texts = [
        " ".join(f"The module {i} has a class number {j}." for j in range(3)) for i in range(4)
    ]
    rows = list(
        _train(_records(texts), v, SPAN, pack=False, shuffle=False, num_epochs=2, batch_size=1)
    )
    assert len(rows) == 8
    first, second = rows[:4], rows[4:]
    assert _span_texts(first, v) == _span_texts(second, v) == [v.decode(v.encode(t)) for t in texts]
    assert any(
        not np.array_equal(a["encoder_inputs"], b["encoder_inputs"])
        for a, b in zip(first, second, strict=True)
    )


def test_seq2seq_batches_truncate_with_eos(v):
    records = [
        {"body": "A short body.", "title": b"Short"},
        {"body": b"A much longer body " * 20, "title": "A title that is far too long to fit " * 3},
        {"body": "Another body.", "title": "Another"},
    ]
    batches = list(
        _train(records, v, SEQ2SEQ, pack=False, shuffle=False, num_epochs=1, batch_size=3)
    )
    assert len(batches) == 1
    (row0,), (row1,), (row2,) = _segments(batches[0], SEQ2SEQ, 3)
    np.testing.assert_array_equal(row0[0], [*v.encode("t: A short body."), 1])
    np.testing.assert_array_equal(row0[1], [*v.encode("Short"), 1])
    assert len(row1[0]) == SEQ2SEQ.inputs_len and len(row1[1]) == SEQ2SEQ.targets_len
    assert v.decode(row1[1]).startswith("A title")
    assert v.decode(row2[0]) == "t: Another body."
    # Packed, the same examples share rows.
    packed = list(_train(records, v, SEQ2SEQ, shuffle=False, num_epochs=1, batch_size=1))
    assert sum(int(b["decoder_segment_ids"].max()) for b in packed) == 3


def test_causal_lm_task_gives_the_seq_len_pipelines_batches(splits, v):
    """task=Task("causal_lm") is exactly the pre-Task call, for train and eval."""
    task = Task("causal_lm", seq_len=32)
    by_task = list(itertools.islice(_train(splits["train"], v, task, seed=3), 4))
    by_len = list(itertools.islice(_train(splits["train"], v, None, seed=3, seq_len=32), 4))
    _assert_batches_equal(by_task, by_len)
    assert set(by_task[0]) == set(pipeline.KEYS)
    evals = list(_eval(splits["validation"], v, task, num_batches=3))
    _assert_batches_equal(
        evals, list(_eval(splits["validation"], v, None, seq_len=32, num_batches=3))
    )


@pytest.mark.parametrize("task", [SPAN, PREFIX], ids=lambda t: t.name)
def test_train_is_deterministic_given_the_seed(splits, v, task):
    first = list(itertools.islice(_train(splits["train"], v, task, seed=7), 4))
    again = list(itertools.islice(_train(splits["train"], v, task, seed=7), 4))
    other = list(itertools.islice(_train(splits["train"], v, task, seed=8), 4))
    _assert_batches_equal(first, again)
    assert any(
        not np.array_equal(a["targets"], b["targets"]) for a, b in zip(first, other, strict=True)
    )


@pytest.mark.parametrize("task", [SPAN, PREFIX, SEQ2SEQ], ids=lambda t: t.name)
@pytest.mark.parametrize("pack,skip", [(True, 0), (True, 23), (False, 5)])
def test_train_state_restores_through_json(splits, v, task, pack, skip):
    """A fresh iterator given the JSON-round-tripped state continues with the same batches."""
    source = splits["train"]
    if task.name == "seq2seq":
        # The corpus has one text feature: use it as both sides.
        source = [{"body": r["text"], "title": r["text"]} for r in (source[i] for i in range(300))]
    it = _train(source, v, task, pack=pack, seed=3)
    for _ in range(skip):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(5)]
    fresh = _train(source, v, task, pack=pack, seed=3)
    fresh.set_state(state)
    _assert_batches_equal([next(fresh) for _ in range(5)], expected)


@pytest.mark.parametrize("shuffle", [False, True])
def test_processes_read_disjoint_shards(v, shuffle):
    texts = [f"Record number {i} describes one function." for i in range(12)]
    seen = []
    for p in range(2):
        it = _train(
            _records(texts),
            v,
            SPAN,
            batch_size=2,
            pack=False,
            shuffle=shuffle,
            num_epochs=1,
            process_index=p,
            process_count=2,
        )
        rows = _span_texts(list(it), v)
        assert sorted(rows) == sorted(texts[p::2])
        seen.append(set(rows))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(texts)


@pytest.mark.parametrize("task", [SPAN, PREFIX], ids=lambda t: t.name)
def test_eval_is_a_deterministic_pass(splits, v, task):
    first = list(_eval(splits["validation"], v, task))
    second = list(_eval(splits["validation"], v, task))
    assert first
    _assert_batches_equal(first, second)
    for b in first:
        _segments(b, task)


def test_eval_span_corruption_drops_no_token(splits, v):
    source = splits["validation"]
    ids = [
        preprocessors.tokenize(sources.record_text(source[i]), v, add_eos=False)
        for i in range(len(source))
    ]
    batches = list(_eval(source, v, SPAN, pack=False))
    rebuilt = [
        sc.decode_span_corruption(enc, tgt, v)
        for b in batches
        for row in _segments(b, SPAN)
        for enc, tgt in row
    ]
    np.testing.assert_array_equal(np.concatenate(rebuilt), np.concatenate(ids))


def test_eval_tops_up_uneven_shards_with_encdec_padding_batches(v):
    long_text = " ".join(f"The module number {i} defines a class." for i in range(30))
    texts = [long_text if i % 2 == 0 else f"short record {i}" for i in range(6)]
    per_process = [
        list(_eval(_records(texts), v, SPAN, pack=False, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(per_process[0]) == len(per_process[1]) > 1
    last = per_process[1][-1]
    shapes = pipeline.batch_shapes(SPAN, BATCH)
    for k, (shape, dtype) in shapes.items():
        assert last[k].shape == shape and last[k].dtype == dtype and not last[k].any()
    for batches in per_process:
        for b in batches:
            _segments(b, SPAN)
    assert sorted(_span_texts(per_process[1], v)) == sorted(texts[1::2])
    assert pipeline.zero_batch(SPAN, 2)["encoder_inputs"].shape == (2, SPAN.inputs_len)


def test_task_argument_errors(v):
    records = _records(["some text"])
    with pytest.raises(ValueError, match="Give either task= or seq_len="):
        pipeline.make_train_iterator(records, v, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="seq_len=16 disagrees with the task's seq_len=None"):
        _train(records, v, SPAN, seq_len=16)
    with pytest.raises(ValueError, match="text_key='body' disagrees"):
        _eval(records, v, SPAN, text_key="body")
    # Repeating the task's own values is fine.
    causal = Task("causal_lm", seq_len=16)
    next(_train(records, v, causal, seq_len=16, text_key="text", batch_size=1))


def test_span_corruption_needs_enough_sentinels(corpus_dir):
    few = vocab.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name=corpus.NAME, vocab_size=TEST_VOCAB_SIZE, extra_ids=2
    )
    with pytest.raises(ValueError, match=r"up to 3 noise spans .* has 2 extra ids.*extra_ids >= 3"):
        _train(_records(["some text"]), few, SPAN)
