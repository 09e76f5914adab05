"""Masked-LM data (t5x_like/data/mlm.py): BERT's selection and 80/10/10 replacement, whole-word
masking, special tokens never masked, NSP/SOP pairs, packing with segment ids, determinism, and
the vocabulary's [CLS]/[SEP]/[MASK] ids."""

import numpy as np
import pytest
from conftest import TEST_VOCAB_SIZE

from t5x_like.data import mlm, pipeline, sources, tasks
from t5x_like.data import vocab as vocab_lib

SEQ_LEN = 64


@pytest.fixture(scope="module")
def vocab(corpus_dir):
    return vocab_lib.load_or_train_vocab(
        None,
        data_dir=corpus_dir,
        dataset_name="t5x_like_corpus",
        vocab_size=TEST_VOCAB_SIZE,
        extra_ids=3,
    )


@pytest.fixture(scope="module")
def split(corpus_dir):
    return sources.prepare_dataset("t5x_like_corpus", corpus_dir)["train"]


def _batches(split, vocab, n=3, seed=0, **task_fields):
    task = tasks.Task("mlm", seq_len=SEQ_LEN, **task_fields)
    it = pipeline.make_train_iterator(split, vocab, task=task, batch_size=8, seed=seed)
    return [next(it) for _ in range(n)]


def test_special_ids_are_the_first_extra_ids_and_ids_of_pieces_are_unchanged(vocab):
    n = vocab.sp_vocab_size
    assert (vocab.cls_id, vocab.sep_id, vocab.mask_id) == (n + 2, n + 1, n)
    plain = vocab_lib.SentencePieceVocab(vocab.model_proto)
    assert plain.encode("a list is mutable") == vocab.encode("a list is mutable")
    with pytest.raises(ValueError) as e:
        _ = plain.mask_id
    assert str(e.value) == (
        "data.extra_ids=0: the encoder-only rows' [CLS], [SEP], [MASK] are the vocabulary's "
        "first 3 extra ids; set data.extra_ids >= 3."
    )


def _toy_vocab(n=50):
    """Pieces 3..n-1; even ids start a word; ids n, n+1, n+2 are [MASK], [SEP], [CLS]."""
    word_start = np.array([i % 2 == 0 for i in range(n + 3)])
    return mlm.MlmVocab(
        cls_id=n + 2,
        sep_id=n + 1,
        mask_id=n,
        random_ids=(3, n),
        word_start=word_start,
        sentence_end=np.zeros(n + 3, bool),
    )


def test_selection_rate_and_the_80_10_10_replacement():
    vocab = _toy_vocab()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 50, 2000).astype(np.int32)
    maskable = np.ones(2000, bool)
    maskable[::10] = False  # Specials: never selected.
    inputs, targets, weights = mlm.mask_tokens(ids, maskable, rng, vocab, rate=0.15)
    selected = weights > 0
    assert selected.sum() == round(0.15 * 1800)
    assert not selected[~maskable].any()
    np.testing.assert_array_equal(targets, ids)
    np.testing.assert_array_equal(inputs[~selected], ids[~selected])
    masked = inputs[selected] == vocab.mask_id
    kept = inputs[selected] == ids[selected]
    # 270 draws: binomial bounds at about 4 sigma.
    assert 0.72 < masked.mean() < 0.88
    randomised = ~masked & ~kept
    assert 0.03 < randomised.mean() < 0.17 and 0.03 < kept.mean() < 0.19
    assert ((inputs[selected][randomised] >= 3) & (inputs[selected][randomised] < 50)).all()


def test_whole_word_masking_selects_whole_words():
    vocab = _toy_vocab()
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 50, 400).astype(np.int32)
    maskable = np.ones(400, bool)
    maskable[[0, 399]] = False
    _, _, weights = mlm.mask_tokens(ids, maskable, rng, vocab, rate=0.15, whole_word=True)
    words = mlm._words(ids, maskable, vocab.word_start)
    assert sum(len(w) for w in words) == 398
    for word in words:
        assert len(set(weights[word])) == 1  # All of a word or none of it.
    assert 0 < weights.sum() <= round(0.15 * 398)


def test_rows_mask_15_percent_and_never_the_special_tokens(split, vocab):
    for batch in _batches(split, vocab):
        real = batch["segment_ids"] > 0
        special = np.isin(batch["targets"], [vocab.cls_id, vocab.sep_id])
        assert not (batch["weights"][special] > 0).any()
        assert not (batch["weights"][~real] > 0).any()
        rate = batch["weights"].sum() / (real & ~special).sum()
        assert 0.13 < rate < 0.17, rate
        chosen = batch["weights"] > 0
        np.testing.assert_array_equal(batch["inputs"][~chosen], batch["targets"][~chosen])
        assert (batch["inputs"][chosen] == vocab.mask_id).mean() > 0.6


def test_packed_rows_hold_whole_examples_with_restarting_positions(split, vocab):
    batches = _batches(split, vocab, n=6)
    # Documents' last chunks are short: some rows hold several examples.
    assert max(b["segment_ids"].max() for b in batches) >= 2
    for batch in batches:
        for row in range(8):
            seg, pos, tokens = (batch[k][row] for k in ("segment_ids", "positions", "targets"))
            for s in range(1, seg.max() + 1):
                where = np.flatnonzero(seg == s)
                np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))
                np.testing.assert_array_equal(pos[where], np.arange(len(where)))
                assert tokens[where[0]] == vocab.cls_id and tokens[where[-1]] == vocab.sep_id
            assert (batch["token_type_ids"][row] == 0).all()


def test_batches_are_deterministic_per_seed(split, vocab):
    a, b = _batches(split, vocab, seed=5), _batches(split, vocab, seed=5)
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    c = _batches(split, vocab, seed=6)
    assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])


@pytest.mark.parametrize("mode", ["nsp", "sop"])
def test_sentence_pairs_have_token_types_and_balanced_labels(split, vocab, mode):
    batches = _batches(split, vocab, n=4, sentence_pair=mode)
    labels = np.concatenate([b["nsp_label"][:, 0] for b in batches])
    assert set(labels) == {0, 1} and 0.2 < labels.mean() < 0.8
    for batch in batches:
        assert batch["nsp_label"].shape == (8, 1)
        for row in range(8):
            seg = batch["segment_ids"][row]
            assert set(seg) <= {0, 1}  # One pair per row.
            n = int(seg.sum())
            tokens, types = batch["targets"][row, :n], batch["token_type_ids"][row, :n]
            seps = np.flatnonzero(tokens == vocab.sep_id)
            assert tokens[0] == vocab.cls_id and len(seps) == 2 and seps[1] == n - 1
            np.testing.assert_array_equal(types, (np.arange(n) > seps[0]).astype(np.int32))
            assert (batch["token_type_ids"][row, n:] == 0).all()


def test_sop_swaps_the_two_halves_of_one_chunk():
    vocab = _toy_vocab()
    chunk = np.arange(3, 23, dtype=np.int32)
    seen = set()
    for seed in range(20):
        ex = mlm.pair_example(
            chunk,
            chunk[:0],
            np.random.default_rng(seed),
            vocab,
            mode="sop",
            rate=0.15,
            whole_word=False,
        )
        t = ex["targets"]
        seps = np.flatnonzero(t == vocab.sep_id)
        a, b = t[1 : seps[0]], t[seps[0] + 1 : seps[1]]
        whole = np.concatenate([b, a]) if ex["nsp_label"][0] else np.concatenate([a, b])
        np.testing.assert_array_equal(whole, chunk)
        seen.add(int(ex["nsp_label"][0]))
    assert seen == {0, 1}


def test_bad_mlm_settings_fail_with_one_line():
    with pytest.raises(ValueError, match=r"^data.mlm_probability=1.5 must be in \(0, 1\)"):
        tasks.Task("mlm", seq_len=16, mlm_probability=1.5)
    with pytest.raises(ValueError, match=r"^data.sentence_pair='qa' is not supported"):
        tasks.Task("mlm", seq_len=16, sentence_pair="qa")
    with pytest.raises(ValueError, match=r"^data.seq_len must be at least 5"):
        tasks.Task("mlm", seq_len=4, sentence_pair="nsp")
