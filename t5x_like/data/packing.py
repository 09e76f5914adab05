"""Fixed-length rows from variable-length (inputs, targets) examples: packed or padded alone.

Every row has `inputs`, `targets` (int32, 0-padded), `segment_ids` (int32: 1..k for the k
examples in the row, 0 on padding), `positions` (int32: 0..len-1 restarting per segment) and
`weights` (float32: 1 on real target tokens, 0 on padding). Packing is grain's first-fit
packer; this module renames its output and adds the weights.
"""

import functools

import grain
import numpy as np

FEATURES = ("inputs", "targets")


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
    return {
        "inputs": row["inputs"].astype(np.int32),
        "targets": row["targets"].astype(np.int32),
        "segment_ids": segment_ids,
        "positions": row["targets_positions"].astype(np.int32),
        "weights": (segment_ids > 0).astype(np.float32),
    }


def pad_example(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example alone in a row of `seq_len` (the no-packing path): segment id 1 on tokens."""
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
        "weights": real.astype(np.float32),
    }


def _checked_features(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    _validate(example, seq_len)
    return {k: example[k] for k in FEATURES}


def pack(
    ds: grain.IterDataset,
    seq_len: int,
    *,
    num_packing_bins: int,
    shuffle_bins: bool = False,
    seed: int = 0,
) -> grain.IterDataset:
    """Packs a dataset of examples into rows of `seq_len` with grain's first-fit packer.

    grain fills `num_packing_bins` rows at once and emits all of them as soon as an example
    fits in none, so more bins mean less padding (and rows drawn from a wider window).
    `shuffle_bins` shuffles the order in which one set of bins is emitted.
    """

    packed = grain.experimental.FirstFitPackIterDataset(
        ds.map(functools.partial(_checked_features, seq_len=seq_len)),
        length_struct={k: seq_len for k in FEATURES},
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
) -> grain.IterDataset:
    """`pack(...)` if `pack_examples`, else `pad(...)`."""
    if pack_examples:
        return pack(
            ds, seq_len, num_packing_bins=num_packing_bins, shuffle_bins=shuffle_bins, seed=seed
        )
    return pad(ds, seq_len)
