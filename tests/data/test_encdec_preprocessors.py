"""Encoder-decoder preprocessing: prefix LM, seq2seq, truncation with EOS, per-document seeds."""

import pickle

import grain
import numpy as np
import pytest

from t5x_like.data import preprocessors


class CharVocab:
    """One id per character (its code point), EOS 1."""

    eos_id = 1

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_truncate_with_eos_keeps_eos_last():
    ids = np.array([5, 6, 7, 8, 1], np.int32)
    np.testing.assert_array_equal(preprocessors.truncate_with_eos(ids, 10, 1), ids)
    np.testing.assert_array_equal(preprocessors.truncate_with_eos(ids, 5, 1), ids)
    np.testing.assert_array_equal(preprocessors.truncate_with_eos(ids, 3, 1), [5, 6, 1])
    np.testing.assert_array_equal(preprocessors.truncate_with_eos(ids, 1, 1), [1])
    with pytest.raises(ValueError, match="max_len must be positive"):
        preprocessors.truncate_with_eos(ids, 0, 1)


def test_seq2seq_example_tokenizes_prefixes_and_truncates():
    """inputs = prefix + text + EOS, targets = text + EOS, each cut to its length, EOS kept."""
    record = {"body": b"hello world", "summary": "hi"}
    kw = dict(inputs_key="body", targets_key="summary", inputs_prefix="s: ")
    ex = preprocessors.seq2seq_example(record, CharVocab(), inputs_len=64, targets_len=8, **kw)
    np.testing.assert_array_equal(ex["inputs"], [*map(ord, "s: hello world"), 1])
    np.testing.assert_array_equal(ex["targets"], [*map(ord, "hi"), 1])
    assert ex["inputs"].dtype == ex["targets"].dtype == np.int32
    short = preprocessors.seq2seq_example(record, CharVocab(), inputs_len=6, targets_len=2, **kw)
    np.testing.assert_array_equal(short["inputs"], [*map(ord, "s: he"), 1])
    np.testing.assert_array_equal(short["targets"], [ord("h"), 1])
    # An empty target text is just EOS; a missing feature names itself.
    empty = preprocessors.seq2seq_example(
        {"body": b"x", "summary": b""}, CharVocab(), inputs_len=6, targets_len=4, **kw
    )
    np.testing.assert_array_equal(empty["targets"], [1])
    with pytest.raises(KeyError, match="'summary'"):
        preprocessors.seq2seq_example(
            {"body": b"x"}, CharVocab(), inputs_len=6, targets_len=4, **kw
        )


def test_seq2seq_transform_pickles():
    make = preprocessors.Seq2SeqExample(
        CharVocab(), inputs_key="a", targets_key="b", inputs_len=4, targets_len=3
    )
    make = pickle.loads(pickle.dumps(make))
    ex = make.map({"a": "abcdef", "b": "xyz"})
    np.testing.assert_array_equal(ex["inputs"], [97, 98, 99, 1])
    np.testing.assert_array_equal(ex["targets"], [120, 121, 1])


@pytest.mark.parametrize("inputs_len,targets_len", [(8, 8), (3, 16), (16, 4), (1, 2)])
def test_prefix_lm_splits_fit_and_cover_the_chunk(inputs_len, targets_len):
    """Every split point leaves both sides non-empty and within their lengths; all occur."""
    rng = np.random.default_rng(0)
    n = preprocessors.prefix_lm_chunk_length(inputs_len, targets_len)
    assert n == min(inputs_len + 1, targets_len)
    ids = np.arange(3, 3 + n, dtype=np.int32)
    splits = set()
    for _ in range(300):
        ex = preprocessors.prefix_lm_example(
            ids, rng, 1, inputs_len=inputs_len, targets_len=targets_len
        )
        inputs, targets = ex["inputs"], ex["targets"]
        assert 1 <= len(inputs) <= inputs_len
        assert 2 <= len(targets) <= targets_len or (n == 1 and len(targets) == 1)
        assert targets[-1] == 1 and 1 not in inputs  # EOS ends the targets only.
        np.testing.assert_array_equal(np.concatenate([inputs, targets[:-1]]), ids)
        splits.add(len(inputs))
    assert splits == set(range(1, max(n - 1, 1) + 1))


def test_prefix_lm_short_chunks_and_errors():
    rng = np.random.default_rng(0)
    one = preprocessors.prefix_lm_example(np.array([9]), rng, 1, inputs_len=4, targets_len=4)
    np.testing.assert_array_equal(one["inputs"], [9])
    np.testing.assert_array_equal(one["targets"], [1])
    with pytest.raises(ValueError, match="chunk of 0 tokens"):
        preprocessors.prefix_lm_example(np.zeros(0), rng, 1, inputs_len=4, targets_len=4)
    with pytest.raises(ValueError, match="chunk of 20 tokens cannot be split"):
        preprocessors.prefix_lm_example(np.arange(20), rng, 1, inputs_len=4, targets_len=4)
    with pytest.raises(ValueError, match="targets_len >= 2"):
        preprocessors.prefix_lm_chunk_length(4, 1)


def test_prefix_lm_chunks_cover_the_document_deterministically():
    transform = pickle.loads(pickle.dumps(preprocessors.PrefixLMChunks(1, 6, 6)))
    assert transform.chunk_length == 6
    ids = np.arange(3, 3 + 27, dtype=np.int32)
    examples = transform.flat_map({"ids": ids, "seed": 4})
    assert len(examples) == 5
    rebuilt = np.concatenate([np.concatenate([e["inputs"], e["targets"][:-1]]) for e in examples])
    np.testing.assert_array_equal(rebuilt, ids)
    again = transform.flat_map({"ids": ids, "seed": 4})
    other = transform.flat_map({"ids": ids, "seed": 5})
    assert [len(e["inputs"]) for e in again] == [len(e["inputs"]) for e in examples]
    assert [len(e["inputs"]) for e in other] != [len(e["inputs"]) for e in examples]


def test_seed_document_depends_only_on_the_seed_and_position():
    """grain's random map gives each record a seed from (dataset seed, index)."""
    docs = grain.MapDataset.source([np.arange(3) + i for i in range(20)])

    def seeds(ds):
        return [x["seed"] for x in ds]

    a = seeds(docs.random_map(preprocessors.SeedDocument(), seed=1))
    b = seeds(docs.random_map(preprocessors.SeedDocument(), seed=1))
    c = seeds(docs.random_map(preprocessors.SeedDocument(), seed=2))
    assert a == b and a != c
    assert len(set(a)) == 20
    # Reading one element alone, or through threads, gives the same seed.
    mapped = docs.random_map(preprocessors.SeedDocument(), seed=1)
    assert mapped[13]["seed"] == a[13]
    threaded = mapped.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8))
    assert seeds(threaded) == a
    np.testing.assert_array_equal(mapped[5]["ids"], np.arange(3) + 5)


def test_tokenize_text_without_eos():
    tok = preprocessors.TokenizeText(CharVocab(), add_eos=False)
    np.testing.assert_array_equal(tok.map({"text": b"ab"}), [97, 98])
