"""Rows of seq_len from causal-LM examples: padded alone, or packed with segment ids."""

import collections

import grain
import numpy as np
import pytest

from t5x_like.data import packing, preprocessors

KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")
SEQ_LEN = 16


def _examples(n: int, seed: int, max_len: int = SEQ_LEN) -> list[dict[str, np.ndarray]]:
    """`n` causal-LM examples of random lengths in [1, max_len] with ids >= 3."""
    rng = np.random.default_rng(seed)
    lengths = [*rng.integers(1, max_len + 1, size=n - 2), 1, max_len]  # Include both extremes.
    return [
        preprocessors.causal_lm_example(rng.integers(3, 500, size=k).astype(np.int32))
        for k in lengths
    ]


def _iter_ds(examples) -> grain.IterDataset:
    return grain.MapDataset.source(examples).to_iter_dataset()


def _segments(row: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (inputs, targets) token tuples of each segment of a row, in order."""
    out = []
    for seg in range(1, int(row["segment_ids"].max()) + 1):
        mask = row["segment_ids"] == seg
        out.append((tuple(row["inputs"][mask].tolist()), tuple(row["targets"][mask].tolist())))
    return out


def _check_row(row: dict[str, np.ndarray]) -> None:
    """The invariants every packed or padded row satisfies."""
    assert set(row) == set(KEYS)
    for k in KEYS:
        assert row[k].shape == (SEQ_LEN,)
        assert row[k].dtype == (np.float32 if k == "weights" else np.int32)
    seg, pos = row["segment_ids"], row["positions"]
    real = seg > 0
    np.testing.assert_array_equal(row["weights"], real.astype(np.float32))
    # Real tokens first, then padding, all zeros.
    n = int(real.sum())
    assert real[:n].all() and not real[n:].any()
    for k in ("inputs", "targets", "positions"):
        assert not row[k][n:].any()
    # Segment ids start at 1 and go up by one per segment, each a contiguous run.
    if n:
        assert seg[0] == 1
        assert set(np.diff(seg[:n]).tolist()) <= {0, 1}
    for s in range(1, int(seg.max()) + 1):
        idx = np.flatnonzero(seg == s)
        assert len(idx) > 0
        np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
        # Positions restart at 0 in every segment; inputs are the shifted targets after BOS 0.
        np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
        assert row["inputs"][idx[0]] == 0
        np.testing.assert_array_equal(row["inputs"][idx[1:]], row["targets"][idx[:-1]])


def test_pad_example_places_the_example_first_then_zeros():
    ex = preprocessors.causal_lm_example(np.array([5, 6, 7], np.int32))
    row = packing.pad_example(ex, 6)
    np.testing.assert_array_equal(row["inputs"], [0, 5, 6, 0, 0, 0])
    np.testing.assert_array_equal(row["targets"], [5, 6, 7, 0, 0, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["positions"], [0, 1, 2, 0, 0, 0])
    np.testing.assert_array_equal(row["weights"], [1, 1, 1, 0, 0, 0])
    assert row["weights"].dtype == np.float32
    assert all(row[k].dtype == np.int32 for k in KEYS if k != "weights")


@pytest.mark.parametrize("n", [1, 7, SEQ_LEN])
def test_pad_example_rows_satisfy_the_row_invariants(n):
    ex = preprocessors.causal_lm_example(np.arange(3, 3 + n, dtype=np.int32))
    row = packing.pad_example(ex, SEQ_LEN)
    _check_row(row)
    assert _segments(row) == [(tuple(ex["inputs"].tolist()), tuple(ex["targets"].tolist()))]


def test_pad_example_rejects_too_long_and_mismatched_examples():
    ex = preprocessors.causal_lm_example(np.arange(3, 3 + SEQ_LEN + 1, dtype=np.int32))
    with pytest.raises(ValueError, match=f"{SEQ_LEN + 1} tokens does not fit seq_len={SEQ_LEN}"):
        packing.pad_example(ex, SEQ_LEN)
    bad = {"inputs": np.zeros(3, np.int32), "targets": np.ones(4, np.int32)}
    with pytest.raises(ValueError, match="inputs has 3 tokens but targets has 4"):
        packing.pad_example(bad, SEQ_LEN)


@pytest.mark.parametrize("num_bins", [1, 3, 16])
def test_pack_keeps_every_token_exactly_once(num_bins):
    """Packed rows satisfy the row invariants and hold exactly the input examples."""
    examples = _examples(60, seed=num_bins)
    rows = list(packing.pack(_iter_ds(examples), SEQ_LEN, num_packing_bins=num_bins))
    for row in rows:
        _check_row(row)
    packed = collections.Counter(s for row in rows for s in _segments(row))
    given = collections.Counter(
        (tuple(e["inputs"].tolist()), tuple(e["targets"].tolist())) for e in examples
    )
    assert packed == given
    assert sum(row["weights"].sum() for row in rows) == sum(len(e["targets"]) for e in examples)


def test_pack_with_shuffled_bins_keeps_every_token_exactly_once():
    examples = _examples(40, seed=7)
    rows = list(
        packing.pack(_iter_ds(examples), SEQ_LEN, num_packing_bins=8, shuffle_bins=True, seed=3)
    )
    for row in rows:
        _check_row(row)
    packed = sorted(s for row in rows for s in _segments(row))
    given = sorted((tuple(e["inputs"].tolist()), tuple(e["targets"].tolist())) for e in examples)
    assert packed == given


def test_packing_needs_fewer_rows_than_padding():
    """Short examples share rows: less padding than one example per row."""
    examples = _examples(60, seed=11, max_len=SEQ_LEN // 2)
    packed = list(
        packing.to_rows(_iter_ds(examples), SEQ_LEN, pack_examples=True, num_packing_bins=8)
    )
    padded = list(
        packing.to_rows(_iter_ds(examples), SEQ_LEN, pack_examples=False, num_packing_bins=8)
    )
    assert len(padded) == len(examples)
    tokens = sum(len(e["targets"]) for e in examples)
    assert len(packed) < len(padded)
    assert len(packed) >= -(-tokens // SEQ_LEN)
    pad_fraction = lambda rows: 1 - sum(r["weights"].sum() for r in rows) / (len(rows) * SEQ_LEN)
    assert pad_fraction(packed) < pad_fraction(padded)
    assert max(r["segment_ids"].max() for r in packed) > 1
    for row in padded:
        _check_row(row)
        assert row["segment_ids"].max() == 1


def test_pack_rejects_an_example_longer_than_seq_len():
    too_long = preprocessors.causal_lm_example(np.arange(3, 3 + SEQ_LEN + 5, dtype=np.int32))
    ds = _iter_ds([*_examples(4, seed=0), too_long])
    with pytest.raises(ValueError, match="does not fit seq_len"):
        list(packing.pack(ds, SEQ_LEN, num_packing_bins=2))
