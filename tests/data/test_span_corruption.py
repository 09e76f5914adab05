"""Span corruption: noise statistics, the T5 format, exact reconstruction and chunk lengths."""

import pickle

import numpy as np
import pytest
from conftest import TEST_VOCAB_SIZE

from t5x_like.data import corpus, preprocessors, sources, vocab
from t5x_like.data import span_corruption as sc


class FakeVocab:
    """Ids below 900 are text; sentinel i is 999 - i (like vocab.SentencePieceVocab)."""

    eos_id = 1
    vocab_size = 1000

    def __init__(self, extra_ids: int = 100):
        self.extra_ids = extra_ids

    def extra_id(self, i: int) -> int:
        assert 0 <= i < self.extra_ids
        return self.vocab_size - 1 - i


def _runs(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True in `mask`."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return (edges[1::2] - edges[::2]).tolist()


@pytest.mark.parametrize("density,span", [(0.15, 3.0), (0.3, 5.0)])
def test_noise_statistics_over_many_chunks(density, span):
    """2,000 chunks of 100-300 tokens: measured density and mean span length match the ask.

    Spans are counted as runs of the mask, so this also checks noise spans never touch.
    """
    rng = np.random.default_rng(0)
    noise = tokens = 0
    span_lengths: list[int] = []
    first_is_noise = last_is_noise = 0
    for length in rng.integers(100, 301, size=2000):
        mask = sc.random_spans_noise_mask(int(length), density, span, rng)
        assert mask.shape == (length,) and mask.dtype == bool
        noise += int(mask.sum())
        tokens += int(length)
        span_lengths += _runs(mask)
        first_is_noise += bool(mask[0])
        last_is_noise += bool(mask[-1])
    measured_density = noise / tokens
    measured_span = float(np.mean(span_lengths))
    print(f"density={density} span={span}: {measured_density:.4f} {measured_span:.4f}")
    assert abs(measured_density - density) < 0.01
    assert abs(measured_span - span) < 0.15
    # Non-noise first, noise last (T5's interleaving); span lengths vary.
    assert first_is_noise == 0 and last_is_noise == 2000
    assert len(set(span_lengths)) > 5


def test_noise_is_spread_over_the_whole_chunk():
    """Every position but the first can be noise, at an even rate away from the ends.

    As in T5, the last span always ends the chunk, so the last positions are noise more often.
    """
    rng = np.random.default_rng(1)
    masks = np.stack([sc.random_spans_noise_mask(60, 0.15, 3.0, rng) for _ in range(3000)])
    per_position = masks.mean(axis=0)
    assert per_position[0] == 0 and (per_position[1:] > 0).all()
    interior = per_position[5:-10]
    assert np.all(np.abs(interior - interior.mean()) < 0.03)
    assert per_position[-1] == 1


@pytest.mark.parametrize("length", [2, 3, 5, 10, 57, 568])
def test_noise_counts_follow_t5(length):
    """round(length * density) clipped to [1, length - 1] in max(1, round(n / mean)) spans."""
    rng = np.random.default_rng(length)
    num_noise, num_spans = sc.noise_counts(length, 0.15, 3.0)
    assert num_noise == min(max(round(length * 0.15), 1), length - 1)
    assert num_spans == min(max(1, round(num_noise / 3.0)), num_noise, length - num_noise)
    mask = sc.random_spans_noise_mask(length, 0.15, 3.0, rng)
    assert mask.sum() == num_noise
    assert len(_runs(mask)) == num_spans


def test_short_chunks_are_left_uncorrupted():
    rng = np.random.default_rng(0)
    v = FakeVocab()
    assert sc.noise_counts(1, 0.15, 3.0) == (0, 0)
    assert sc.noise_counts(0, 0.15, 3.0) == (0, 0)
    one = sc.span_corruption_example(np.array([7]), v, rng)
    np.testing.assert_array_equal(one["inputs"], [7, 1])
    np.testing.assert_array_equal(one["targets"], [1])
    empty = sc.span_corruption_example(np.zeros(0, np.int32), v, rng)
    np.testing.assert_array_equal(empty["inputs"], [1])
    np.testing.assert_array_equal(empty["targets"], [1])


def test_corrupt_with_mask_gives_the_t5_format():
    """The docstring's example: each noise span becomes one sentinel; targets list them."""
    v = FakeVocab()
    ids = np.arange(10, 20)
    mask = np.array([0, 0, 1, 1, 0, 0, 0, 1, 1, 0], bool)
    ex = sc.corrupt_with_mask(ids, mask, v)
    s0, s1 = v.extra_id(0), v.extra_id(1)
    np.testing.assert_array_equal(ex["inputs"], [10, 11, s0, 14, 15, 16, s1, 19, 1])
    np.testing.assert_array_equal(ex["targets"], [s0, 12, 13, s1, 17, 18, 1])
    assert ex["inputs"].dtype == ex["targets"].dtype == np.int32
    np.testing.assert_array_equal(sc.decode_span_corruption(ex["inputs"], ex["targets"], v), ids)


def test_examples_are_well_formed_and_reconstruct_exactly():
    """Many random chunks: sentinels in order, EOS last, lengths as computed, exact inverse."""
    v = FakeVocab()
    rng = np.random.default_rng(2)
    for length in [*range(0, 12), *rng.integers(12, 400, size=300)]:
        ids = rng.integers(3, 900, size=int(length)).astype(np.int32)
        ex = sc.span_corruption_example(ids, v, rng, noise_density=0.2, mean_noise_span_length=2)
        inputs, targets = ex["inputs"], ex["targets"]
        assert inputs[-1] == targets[-1] == v.eos_id
        n_inputs, n_targets = sc.corrupted_lengths(int(length), 0.2, 2)
        assert (len(inputs), len(targets)) == (n_inputs, n_targets)
        k = sc.noise_counts(int(length), 0.2, 2)[1]
        sentinels = [v.extra_id(i) for i in range(k)]
        assert [t for t in inputs if t >= 900] == sentinels
        assert [t for t in targets if t >= 900] == sentinels
        if k:
            assert targets[0] == sentinels[0]
        np.testing.assert_array_equal(sc.decode_span_corruption(inputs, targets, v), ids)


def test_the_generator_decides_the_example():
    ids = np.arange(3, 203, dtype=np.int32)
    v = FakeVocab()

    def make(seed):
        return sc.span_corruption_example(ids, v, np.random.default_rng(seed))

    a, b, c = make(5), make(5), make(6)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])
    assert not np.array_equal(a["inputs"], c["inputs"])


def test_too_few_sentinels_raises():
    ids = np.arange(3, 103, dtype=np.int32)  # 15 noise tokens in 5 spans.
    with pytest.raises(ValueError, match="needs 5 sentinels .* only 4 extra ids"):
        sc.span_corruption_example(ids, FakeVocab(extra_ids=4), np.random.default_rng(0))


def test_decode_rejects_malformed_pairs():
    v = FakeVocab()
    s0, s1 = v.extra_id(0), v.extra_id(1)
    with pytest.raises(ValueError, match="does not start with a sentinel"):
        sc.decode_span_corruption([5, s0, 1], [6, s0, 7, 1], v)
    with pytest.raises(ValueError, match="sentinel 1 where 0 was due"):
        sc.decode_span_corruption([5, s0, 1], [s1, 7, 1], v)
    with pytest.raises(ValueError, match="out of order"):
        sc.decode_span_corruption([5, s1, 1], [s0, 7, s1, 8, 1], v)
    with pytest.raises(ValueError, match="2 spans but inputs only 1"):
        sc.decode_span_corruption([5, s0, 1], [s0, 7, s1, 8, 1], v)


@pytest.mark.parametrize("density,span", [(0.15, 3.0), (0.3, 5.0), (0.5, 3.0), (0.5, 1.0)])
def test_random_spans_helper_fills_inputs(density, span):
    """For every inputs_len, full chunks fill it (exactly unless spans are capped by the
    non-noise tokens, as with density 0.5 and spans of 1), the next length would overflow it,
    and no shorter chunk overflows the inputs or targets lengths."""
    capped = density / span >= 1 - density
    for inputs_len in range(3, 300):
        tokens_length, targets_length = sc.random_spans_helper(inputs_len, density, span)
        n_inputs, n_targets = sc.corrupted_lengths(tokens_length, density, span)
        assert n_targets == targets_length
        assert n_inputs == inputs_len or (capped and n_inputs == inputs_len - 1)
        assert sc.corrupted_lengths(tokens_length + 1, density, span)[0] > inputs_len
        for n in range(0, tokens_length + 1, 7):
            n_in, n_tgt = sc.corrupted_lengths(n, density, span)
            assert n_in <= inputs_len and n_tgt <= targets_length


def test_random_spans_helper_matches_t5():
    """T5's figures for inputs of 512 (its default pretraining length), and the minimum."""
    assert sc.random_spans_helper(512) == (568, 114)
    assert sc.random_spans_helper(3) == (2, 3)
    with pytest.raises(ValueError, match="inputs_length=2 is too short"):
        sc.random_spans_helper(2)


def test_full_chunks_fill_inputs_exactly():
    v = FakeVocab()
    rng = np.random.default_rng(3)
    tokens_length, targets_length = sc.random_spans_helper(64)
    for _ in range(50):
        ids = rng.integers(3, 900, size=tokens_length)
        ex = sc.span_corruption_example(ids, v, rng)
        assert len(ex["inputs"]) == 64
        assert len(ex["targets"]) == targets_length


def test_chunks_transform_covers_the_document_and_pickles():
    """SpanCorruptionChunks: chunks of tokens_length, decoded back to the whole document."""
    v = FakeVocab()
    # 40 inputs: 3 noise spans per chunk, so the seed matters (a single span always ends it).
    tokens_length, _ = sc.random_spans_helper(40)
    ids = np.arange(3, 3 + 5 * tokens_length + 7, dtype=np.int32)
    transform = pickle.loads(pickle.dumps(sc.SpanCorruptionChunks(v, tokens_length)))
    examples = transform.flat_map({"ids": ids, "seed": 11})
    assert len(examples) == 6
    assert all(len(e["inputs"]) == 40 for e in examples[:-1])
    decoded = [sc.decode_span_corruption(e["inputs"], e["targets"], v) for e in examples]
    np.testing.assert_array_equal(np.concatenate(decoded), ids)
    # The per-document seed decides everything: same seed, same examples.
    again = transform.flat_map({"ids": ids, "seed": 11})
    other = transform.flat_map({"ids": ids, "seed": 12})
    for a, b in zip(examples, again, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert any(
        not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(examples, other, strict=True)
    )


def test_corpus_text_reconstructs_exactly(corpus_dir):
    """Real corpus documents through a real vocab: ids, and the decoded text, come back."""
    v = vocab.load_or_train_vocab(
        None,
        data_dir=corpus_dir,
        dataset_name=corpus.NAME,
        vocab_size=TEST_VOCAB_SIZE,
        extra_ids=100,
    )
    source = sources.prepare_dataset(corpus.NAME, corpus_dir)["validation"]
    tokens_length, _ = sc.random_spans_helper(128)
    transform = sc.SpanCorruptionChunks(v, tokens_length)
    for i in range(0, len(source), 7):
        text = sources.record_text(source[i])
        ids = preprocessors.tokenize(text, v, add_eos=False)
        examples = transform.flat_map({"ids": ids, "seed": i})
        sentinels = {v.extra_id(j) for j in range(100)}
        pieces = [sc.decode_span_corruption(e["inputs"], e["targets"], v) for e in examples]
        for e, piece in zip(examples, pieces, strict=True):
            assert len(e["inputs"]) <= 128
            if len(piece) >= 2:  # Every chunk with room for a span is corrupted.
                assert sentinels & set(e["inputs"].tolist())
        rebuilt = np.concatenate(pieces)
        np.testing.assert_array_equal(rebuilt, ids)
        assert v.decode(rebuilt) == v.decode(ids)
