"""Checksums of a checkpoint's contents, computed on the devices where the arrays live.

`state_checksums` gives each array of a pytree a 32-bit position-weighted sum of its bits:
sum over i of word_i * (2 i + 1) mod 2^32, with word_i the i-th element's bits as an unsigned
integer (16-bit and 8-bit dtypes widened). The weight is odd, so changing any one element always
changes the sum, and it depends on the position, so swapped elements change it too. Integer
addition is exact in any order, so the sum is the same for any mesh the arrays are sharded over:
a checkpoint saved on one mesh is verified after a restore onto another. One jitted pass reads
each array once (about as much memory traffic as one optimizer update, only at saves and
restores) and reports, in the same pass, which floating-point arrays hold a NaN or Inf.

`json_checksum` is the SHA-256 of a JSON value's canonical text (the data iterator's state).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from t5x_like.partitioning import path_names

_WORD_TYPES = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _words(x: jax.Array) -> jax.Array:
    """The bits of each element as uint32 (64-bit elements become two trailing words)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:
        return lax.bitcast_convert_type(x, jnp.uint32)
    return lax.bitcast_convert_type(x, _WORD_TYPES[size]).astype(jnp.uint32)


def _weighted_sum(x: jax.Array) -> jax.Array:
    """sum_i word_i * (2 i + 1) mod 2^32, i the row-major index of the element's word."""
    words = _words(x)
    index = jnp.zeros(words.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(words.ndim)):
        iota = lax.broadcasted_iota(jnp.uint32, words.shape, axis)
        index = index + iota * jnp.uint32(stride % 2**32)
        stride *= words.shape[axis]
    return jnp.sum(words * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


def _not_finite(x: jax.Array) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros((), jnp.bool_)
    return jnp.logical_not(jnp.all(jnp.isfinite(x)))


@jax.jit
def _summaries(leaves: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    return [_weighted_sum(x) for x in leaves], [_not_finite(x) for x in leaves]


def _named_leaves(tree: Any) -> tuple[list[str], list[jax.Array]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return ["/".join(path_names(path)) for path, _ in flat], [x for _, x in flat]


def state_checksums(tree: Any) -> tuple[dict[str, int], list[str]]:
    """({array name: checksum}, names of the floating-point arrays holding a NaN or Inf).

    Names are the '/'-joined pytree paths (e.g. 'params/decoder/layers_0/mlp/wi/kernel').
    """
    names, leaves = _named_leaves(tree)
    sums, bad = jax.device_get(_summaries([jnp.asarray(x) for x in leaves]))
    checksums = {name: int(s) for name, s in zip(names, sums, strict=True)}
    return checksums, [name for name, b in zip(names, bad, strict=True) if b]


def mismatches(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Names of the arrays of `actual` whose checksum differs from `expected` (names that
    `expected` lacks are not compared: older checkpoints carry no checksums)."""
    return [name for name, value in actual.items() if expected.get(name, value) != value]


def json_checksum(value: Any) -> str:
    """SHA-256 hex digest of `value`'s canonical JSON text."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
