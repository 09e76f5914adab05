"""Encoder-decoder rows: aligned encoder/decoder segments, shifted decoder inputs, padding."""

import collections

import grain
import numpy as np
import pytest

from t5x_like.data import packing

INPUTS_LEN, TARGETS_LEN = 16, 8


def _examples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Examples whose first tokens name them: inputs start 1000 + i, targets 2000 + i.

    Lengths are random and uncorrelated between the two sides, so either side can be the one
    that does not fit a bin; both extremes of each side are included.
    """
    rng = np.random.default_rng(seed)
    n_in = [*rng.integers(1, INPUTS_LEN + 1, size=n - 2), 1, INPUTS_LEN]
    n_tgt = [*rng.integers(1, TARGETS_LEN + 1, size=n - 2), TARGETS_LEN, 1]
    return [
        {
            "inputs": np.array([1000 + i, *rng.integers(3, 500, size=a - 1)], np.int32),
            "targets": np.array([2000 + i, *rng.integers(3, 500, size=b - 1)], np.int32),
        }
        for i, (a, b) in enumerate(zip(n_in, n_tgt, strict=True))
    ]


def _iter_ds(examples) -> grain.IterDataset:
    return grain.MapDataset.source(examples).to_iter_dataset()


def _check_side(tokens, seg, pos) -> int:
    """Segments 1..k contiguous from the start, positions restarting; zeros after. Returns k."""
    real = seg > 0
    n = int(real.sum())
    assert real[:n].all() and not real[n:].any()
    assert not tokens[n:].any() and not pos[n:].any()
    k = int(seg.max())
    assert sorted(set(seg[:n].tolist())) == list(range(1, k + 1))
    assert set(np.diff(seg[:n]).tolist()) <= {0, 1}
    for s in range(1, k + 1):
        idx = np.flatnonzero(seg == s)
        np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
    return k


def _segments(row) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(encoder tokens, targets) of each segment of a row, checking the row's invariants."""
    assert tuple(row) == packing.ENCDEC_KEYS
    for k in packing.ENCDEC_KEYS:
        length = INPUTS_LEN if k.startswith("encoder_") else TARGETS_LEN
        assert row[k].shape == (length,)
        assert row[k].dtype == (np.float32 if k == "weights" else np.int32)
    enc_seg, dec_seg = row["encoder_segment_ids"], row["decoder_segment_ids"]
    k = _check_side(row["encoder_inputs"], enc_seg, row["encoder_positions"])
    assert _check_side(row["targets"], dec_seg, row["decoder_positions"]) == k
    np.testing.assert_array_equal(row["weights"], (dec_seg > 0).astype(np.float32))
    out = []
    for s in range(1, k + 1):
        enc = row["encoder_inputs"][enc_seg == s]
        tgt = row["targets"][dec_seg == s]
        dec_in = row["decoder_inputs"][dec_seg == s]
        # Shifted right within the segment, BOS 0 first.
        np.testing.assert_array_equal(dec_in, [0, *tgt[:-1]])
        out.append((tuple(enc.tolist()), tuple(tgt.tolist())))
    assert not row["decoder_inputs"][dec_seg == 0].any()
    return out


def _pairs(examples):
    return collections.Counter(
        (tuple(e["inputs"].tolist()), tuple(e["targets"].tolist())) for e in examples
    )


def test_pad_encdec_example():
    ex = {"inputs": np.array([5, 6, 7]), "targets": np.array([8, 9])}
    row = packing.pad_encdec_example(ex, 5, 4)
    np.testing.assert_array_equal(row["encoder_inputs"], [5, 6, 7, 0, 0])
    np.testing.assert_array_equal(row["encoder_segment_ids"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["encoder_positions"], [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(row["targets"], [8, 9, 0, 0])
    np.testing.assert_array_equal(row["decoder_inputs"], [0, 8, 0, 0])
    np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 0, 0])
    np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 0, 0])
    np.testing.assert_array_equal(row["weights"], [1, 1, 0, 0])
    assert row["weights"].dtype == np.float32


@pytest.mark.parametrize("num_bins", [1, 4, 16])
def test_pack_encdec_aligns_segments_and_keeps_every_example(num_bins):
    """Segment k of the encoder row is segment k of the decoder row: the same example."""
    examples = _examples(80, seed=num_bins)
    rows = list(
        packing.pack_encdec(_iter_ds(examples), INPUTS_LEN, TARGETS_LEN, num_packing_bins=num_bins)
    )
    packed = [seg for row in rows for seg in _segments(row)]
    for enc, tgt in packed:
        assert enc[0] - 1000 == tgt[0] - 2000  # The naming tokens agree.
    assert collections.Counter(packed) == _pairs(examples)
    if num_bins > 1:
        assert max(row["encoder_segment_ids"].max() for row in rows) > 1
        assert len(rows) < len(examples)


def test_pack_encdec_with_shuffled_bins_keeps_every_example():
    examples = _examples(40, seed=9)
    rows = list(
        packing.pack_encdec(
            _iter_ds(examples),
            INPUTS_LEN,
            TARGETS_LEN,
            num_packing_bins=8,
            shuffle_bins=True,
            seed=1,
        )
    )
    assert collections.Counter(s for row in rows for s in _segments(row)) == _pairs(examples)


def test_encdec_to_rows_pads_one_example_per_row():
    examples = _examples(10, seed=3)
    rows = list(
        packing.encdec_to_rows(
            _iter_ds(examples), INPUTS_LEN, TARGETS_LEN, pack_examples=False, num_packing_bins=4
        )
    )
    assert len(rows) == len(examples)
    for row, ex in zip(rows, examples, strict=True):
        assert _segments(row) == list(_pairs([ex]))


@pytest.mark.parametrize(
    "inputs,targets,message",
    [
        (
            INPUTS_LEN + 1,
            3,
            f"inputs of {INPUTS_LEN + 1} tokens does not fit inputs_len={INPUTS_LEN}",
        ),
        (3, TARGETS_LEN + 2, f"targets of {TARGETS_LEN + 2} tokens does not fit targets_len"),
        (0, 3, "empty inputs"),
        (3, 0, "empty targets"),
    ],
)
def test_examples_that_do_not_fit_raise(inputs, targets, message):
    bad = {"inputs": np.arange(3, 3 + inputs), "targets": np.arange(3, 3 + targets)}
    with pytest.raises(ValueError, match=message):
        packing.pad_encdec_example(bad, INPUTS_LEN, TARGETS_LEN)
    ds = _iter_ds([*_examples(4, seed=0), bad])
    with pytest.raises(ValueError, match=message):
        list(packing.pack_encdec(ds, INPUTS_LEN, TARGETS_LEN, num_packing_bins=2))
