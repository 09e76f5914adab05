"""Fixed-length rows from variable-length (inputs, targets) examples: packed or padded alone.

Decoder-only rows (`pack`, `pad`, `to_rows`; examples with equal-length inputs and targets)
have the `KEYS`: `inputs`, `targets` (int32, 0-padded), `segment_ids` (int32: 1..k for the k
examples in the row, 0 on padding), `positions` (int32: 0..len-1 restarting per segment) and
`weights` (float32: 1 on real target tokens, 0 on padding).

Encoder-decoder rows (`pack_encdec`, `pad_encdec`, `encdec_to_rows`) have the `ENCDEC_KEYS`:
`encoder_inputs`, `encoder_segment_ids`, `encoder_positions` of length inputs_len, and
`decoder_inputs`, `decoder_segment_ids`, `decoder_positions`, `targets`, `weights` of length
targets_len. Segment k of the encoder row and segment k of the decoder row are the same
example. `decoder_inputs` is `targets` shifted right by one within each segment, each segment
starting with BOS 0 (T5's convention).

Packing is grain's first-fit packer: it places an example in the first of its bins where every
feature fits and gives all of the example's features that bin's next segment id, which is
what keeps encoder and decoder segments aligned. This module renames its output and adds the
weights (and the decoder inputs).
"""

import functools

import grain
import numpy as np

FEATURES = ("inputs", "targets")
# An optional per-token feature: 1 where the loss counts (SFT completions), 0 elsewhere; rows
# made with `loss_mask=True` take their `weights` from it.
LOSS_MASK = "loss_mask"
KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")
ENCDEC_KEYS = (
    "encoder_inputs",
    "encoder_segment_ids",
    "encoder_positions",
    "decoder_inputs",
    "decoder_segment_ids",
    "decoder_positions",
    "targets",
    "weights",
)


def _validate(example: dict[str, np.ndarray], seq_len: int) -> None:
    n = len(example["targets"])
    if len(example["inputs"]) != n:
        raise ValueError(f"inputs has {len(example['inputs'])} tokens but targets has {n}.")
    if n > seq_len:
        raise ValueError(f"Example of {n} tokens does not fit seq_len={seq_len}; chunk it first.")


def _from_grain_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # grain packs each feature separately (inputs_segment_ids, targets_segment_ids, ...). Inputs
    # and targets have equal lengths, so their segment ids and positions agree; keep one copy.
    segment_ids = row["targets_segment_ids"].astype(np.int32)
    weights = segment_ids > 0
    if LOSS_MASK in row:
        weights = weights * row[LOSS_MASK]
    return {
        "inputs": row["inputs"].astype(np.int32),
        "targets": row["targets"].astype(np.int32),
        "segment_ids": segment_ids,
        "positions": row["targets_positions"].astype(np.int32),
        "weights": weights.astype(np.float32),
    }


def pad_example(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example alone in a row of `seq_len` (the no-packing path): segment id 1 on tokens;
    `weights` 1 on them, or the example's `loss_mask` where it has one."""
    _validate(example, seq_len)
    n = len(example["targets"])
    real = np.arange(seq_len) < n

    def pad(x: np.ndarray) -> np.ndarray:
        return np.pad(np.asarray(x, np.int32), (0, seq_len - n))

    return {
        "inputs": pad(example["inputs"]),
        "targets": pad(example["targets"]),
        "segment_ids": real.astype(np.int32),
        "positions": np.where(real, np.arange(seq_len), 0).astype(np.int32),
        "weights": (pad(example[LOSS_MASK]) * real if LOSS_MASK in example else real).astype(
            np.float32
        ),
    }


def _features(loss_mask: bool) -> tuple[str, ...]:
    return (*FEATURES, LOSS_MASK) if loss_mask else FEATURES


def _checked_features(
    example: dict[str, np.ndarray], seq_len: int, loss_mask: bool = False
) -> dict[str, np.ndarray]:
    _validate(example, seq_len)
    return {k: example[k] for k in _features(loss_mask)}


def pack(
    ds: grain.IterDataset,
    seq_len: int,
    *,
    num_packing_bins: int,
    shuffle_bins: bool = False,
    seed: int = 0,
    loss_mask: bool = False,
) -> grain.IterDataset:
    """Packs a dataset of examples into rows of `seq_len` with grain's first-fit packer.

    `loss_mask`: the examples carry `LOSS_MASK`, packed with them and made the rows' `weights`.

    grain fills `num_packing_bins` rows at once and emits all of them as soon as an example
    fits in none, so more bins mean less padding (and rows drawn from a wider window).
    `shuffle_bins` shuffles the order in which one set of bins is emitted.
    """

    packed = grain.experimental.FirstFitPackIterDataset(
        ds.map(functools.partial(_checked_features, seq_len=seq_len, loss_mask=loss_mask)),
        length_struct=dict.fromkeys(_features(loss_mask), seq_len),
        num_packing_bins=num_packing_bins,
        shuffle_bins=shuffle_bins,
        seed=seed,
    )
    return packed.map(_from_grain_packed)


def pad(ds: grain.IterDataset, seq_len: int) -> grain.IterDataset:
    """Each example padded alone to `seq_len` (no packing)."""
    # A partial, not a lambda: grain worker processes must be able to pickle it.
    return ds.map(functools.partial(pad_example, seq_len=seq_len))


def to_rows(
    ds: grain.IterDataset,
    seq_len: int,
    *,
    pack_examples: bool,
    num_packing_bins: int,
    shuffle_bins: bool = False,
    seed: int = 0,
    loss_mask: bool = False,
) -> grain.IterDataset:
    """`pack(...)` if `pack_examples`, else `pad(...)`; `loss_mask` as `pack` takes it."""
    if pack_examples:
        return pack(
            ds,
            seq_len,
            num_packing_bins=num_packing_bins,
            shuffle_bins=shuffle_bins,
            seed=seed,
            loss_mask=loss_mask,
        )
    return pad(ds, seq_len)


def _validate_encdec(example: dict[str, np.ndarray], inputs_len: int, targets_len: int) -> None:
    for key, max_len in (("inputs", inputs_len), ("targets", targets_len)):
        n = len(example[key])
        if n == 0:
            # An empty encoder segment would leave its decoder segment nothing to attend to.
            raise ValueError(f"Encoder-decoder example with empty {key}; every example needs both.")
        if n > max_len:
            raise ValueError(
                f"Encoder-decoder example with {key} of {n} tokens does not fit "
                f"{key}_len={max_len}; truncate or chunk it first."
            )


def _shift_right(targets: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The inputs of teacher forcing: `targets` shifted right by one within each segment."""
    # A segment's first token (position 0) gets BOS 0, which also keeps one example's last
    # target from leaking into the next one's inputs.
    bos = np.zeros(targets.shape[:-1] + (1,), np.int32)
    shifted = np.concatenate([bos, targets[..., :-1]], axis=-1)
    return np.where((positions == 0) | (segment_ids == 0), 0, shifted).astype(np.int32)


def decoder_only_features(
    decoder: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, np.ndarray]:
    """`KEYS` from (targets, segment_ids, positions), rows [L] or batches [B, L]; adds the
    inputs (the targets shifted right within each segment) and the loss weights."""
    targets, segment_ids, positions = (np.asarray(x, np.int32) for x in decoder)
    return {
        "inputs": _shift_right(targets, segment_ids, positions),
        "targets": targets,
        "segment_ids": segment_ids,
        "positions": positions,
        "weights": (segment_ids > 0).astype(np.float32),
    }


def encoder_decoder_features(
    encoder: tuple[np.ndarray, np.ndarray, np.ndarray],
    decoder: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, np.ndarray]:
    """ENCDEC_KEYS from (tokens, segment_ids, positions) of each side, rows [L] or batches
    [B, L]; adds the decoder inputs (the targets shifted right) and the loss weights."""
    enc_tokens, enc_seg, enc_pos = (np.asarray(x, np.int32) for x in encoder)
    targets, dec_seg, dec_pos = (np.asarray(x, np.int32) for x in decoder)
    decoder_inputs = _shift_right(targets, dec_seg, dec_pos)
    return {
        "encoder_inputs": enc_tokens,
        "encoder_segment_ids": enc_seg,
        "encoder_positions": enc_pos,
        "decoder_inputs": decoder_inputs,
        "decoder_segment_ids": dec_seg,
        "decoder_positions": dec_pos,
        "targets": targets,
        "weights": (dec_seg > 0).astype(np.float32),
    }


def pad_encdec_example(
    example: dict[str, np.ndarray], inputs_len: int, targets_len: int
) -> dict[str, np.ndarray]:
    """One encoder-decoder example alone in a row (the no-packing path): segment id 1."""
    _validate_encdec(example, inputs_len, targets_len)

    def side(x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(x)
        real = np.arange(length) < n
        tokens = np.pad(np.asarray(x, np.int32), (0, length - n))
        return tokens, real.astype(np.int32), np.where(real, np.arange(length), 0)

    return encoder_decoder_features(
        side(example["inputs"], inputs_len), side(example["targets"], targets_len)
    )


def _from_grain_packed_encdec(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return encoder_decoder_features(
        (row["inputs"], row["inputs_segment_ids"], row["inputs_positions"]),
        (row["targets"], row["targets_segment_ids"], row["targets_positions"]),
    )


def _checked_encdec_features(
    example: dict[str, np.ndarray], inputs_len: int, targets_len: int
) -> dict[str, np.ndarray]:
    _validate_encdec(example, inputs_len, targets_len)
    return {k: example[k] for k in FEATURES}


def pack_encdec(
    ds: grain.IterDataset,
    inputs_len: int,
    targets_len: int,
    *,
    num_packing_bins: int,
    shuffle_bins: bool = False,
    seed: int = 0,
) -> grain.IterDataset:
    """Packs encoder-decoder examples into rows of (inputs_len, targets_len), first fit.

    An example goes in the first bin where both its inputs and its targets fit; see `pack`
    for `num_packing_bins` and `shuffle_bins`.
    """
    checked = functools.partial(
        _checked_encdec_features, inputs_len=inputs_len, targets_len=targets_len
    )
    packed = grain.experimental.FirstFitPackIterDataset(
        ds.map(checked),
        length_struct={"inputs": inputs_len, "targets": targets_len},
        num_packing_bins=num_packing_bins,
        shuffle_bins=shuffle_bins,
        seed=seed,
    )
    return packed.map(_from_grain_packed_encdec)


def pad_encdec(ds: grain.IterDataset, inputs_len: int, targets_len: int) -> grain.IterDataset:
    """Each encoder-decoder example padded alone to (inputs_len, targets_len)."""
    return ds.map(
        functools.partial(pad_encdec_example, inputs_len=inputs_len, targets_len=targets_len)
    )


def encdec_to_rows(
    ds: grain.IterDataset,
    inputs_len: int,
    targets_len: int,
    *,
    pack_examples: bool,
    num_packing_bins: int,
    shuffle_bins: bool = False,
    seed: int = 0,
) -> grain.IterDataset:
    """`pack_encdec(...)` if `pack_examples`, else `pad_encdec(...)`."""
    if pack_examples:
        return pack_encdec(
            ds,
            inputs_len,
            targets_len,
            num_packing_bins=num_packing_bins,
            shuffle_bins=shuffle_bins,
            seed=seed,
        )
    return pad_encdec(ds, inputs_len, targets_len)
