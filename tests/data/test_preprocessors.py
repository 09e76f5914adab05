"""Causal-LM preprocessing: tokenising with EOS, chunking without loss, shifted inputs."""

import pickle

import numpy as np
import pytest
from conftest import TEST_VOCAB_SIZE

from t5x_like.data import corpus, preprocessors, vocab


class CharVocab:
    """A stand-in vocabulary: one id per character (its code point), EOS 1."""

    eos_id = 1

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_tokenize_appends_eos():
    ids = preprocessors.tokenize("abc", CharVocab())
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [97, 98, 99, 1])
    np.testing.assert_array_equal(
        preprocessors.tokenize("abc", CharVocab(), add_eos=False), [97, 98, 99]
    )
    np.testing.assert_array_equal(preprocessors.tokenize("", CharVocab()), [1])


def test_tokenize_decodes_bytes_as_utf8():
    np.testing.assert_array_equal(
        preprocessors.tokenize("caf\u00e9".encode(), CharVocab()),
        preprocessors.tokenize("caf\u00e9", CharVocab()),
    )


def test_tokenize_with_a_sentencepiece_vocab(corpus_dir):
    """Real vocab: the ids are encode(text) then EOS, and decode gives the text back."""
    v = vocab.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name=corpus.NAME, vocab_size=TEST_VOCAB_SIZE
    )
    text = "Return the number of items in a container."
    ids = preprocessors.tokenize(text, v)
    assert ids[-1] == v.eos_id
    assert list(ids[:-1]) == v.encode(text)
    assert v.eos_id not in ids[:-1]
    assert v.decode(ids) == text


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 23])
@pytest.mark.parametrize("max_len", [1, 3, 8])
def test_split_into_chunks_covers_every_id(n, max_len):
    """Chunks are at most max_len long, none empty, and concatenate back to the input."""
    ids = np.arange(10, 10 + n, dtype=np.int32)
    chunks = preprocessors.split_into_chunks(ids, max_len)
    assert all(0 < len(c) <= max_len for c in chunks)
    assert len(chunks) == -(-n // max_len)
    joined = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    np.testing.assert_array_equal(joined, ids)
    # Only the last chunk may be short.
    assert all(len(c) == max_len for c in chunks[:-1])


@pytest.mark.parametrize("max_len", [0, -4])
def test_split_into_chunks_rejects_non_positive_max_len(max_len):
    with pytest.raises(ValueError, match="max_len must be positive"):
        preprocessors.split_into_chunks(np.arange(5), max_len)


def test_causal_lm_example_shifts_inputs_right_after_bos():
    chunk = np.array([5, 6, 7, 8], np.int32)
    ex = preprocessors.causal_lm_example(chunk)
    np.testing.assert_array_equal(ex["targets"], chunk)
    np.testing.assert_array_equal(ex["inputs"], [0, 5, 6, 7])
    assert ex["inputs"].dtype == ex["targets"].dtype == np.int32
    one = preprocessors.causal_lm_example(np.array([9]))
    np.testing.assert_array_equal(one["inputs"], [0])
    np.testing.assert_array_equal(one["targets"], [9])


def test_causal_lm_examples_one_per_chunk():
    """Every chunk is its own example: the target of a chunk's first token is not conditioned
    on the previous chunk (input 0), and the targets together are the whole document."""
    ids = np.arange(3, 3 + 11, dtype=np.int32)
    examples = preprocessors.causal_lm_examples(ids, 4)
    assert [len(e["targets"]) for e in examples] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([e["targets"] for e in examples]), ids)
    for e in examples:
        assert e["inputs"][0] == preprocessors.BOS_ID
        np.testing.assert_array_equal(e["inputs"][1:], e["targets"][:-1])


def test_grain_transforms_tokenize_and_chunk_records():
    """TokenizeText reads the record's text feature; CausalLMChunks yields chunk examples."""
    tok = preprocessors.TokenizeText(CharVocab(), text_key="body")
    ids = tok.map({"body": b"hello world", "text": b"ignored"})
    np.testing.assert_array_equal(ids, [*map(ord, "hello world"), 1])
    chunks = preprocessors.CausalLMChunks(5).flat_map(ids)
    assert [len(c["targets"]) for c in chunks] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate([c["targets"] for c in chunks]), ids)
    with pytest.raises(KeyError, match="'body'"):
        tok.map({"text": b"no body"})


def test_grain_transforms_pickle():
    """grain worker processes receive the transforms pickled."""
    tok = pickle.loads(pickle.dumps(preprocessors.TokenizeText(CharVocab(), "body")))
    assert tok.text_key == "body"
    np.testing.assert_array_equal(tok.map({"body": "ab"}), [97, 98, 1])
    chunks = pickle.loads(pickle.dumps(preprocessors.CausalLMChunks(2)))
    assert len(chunks.flat_map(np.arange(3, 8))) == 3
