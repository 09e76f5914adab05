"""Streaming import of an HF safetensors checkpoint straight onto a device mesh.

`Family.import_weights` (t5x_like/interop/family.py) reads a whole checkpoint into host memory,
converts it and returns numpy params: fine for small models, not for an 8B one on a host that
should hold one shard. `stream_params` builds the same params as `jax.Array`s with given
shardings while each host reads only the part of each tensor its own devices hold:

- `lazy_state_dict` lists the tensors of a checkpoint (`model.safetensors` or the shards of
  `model.safetensors.index.json`) as `LazyTensor`s: name, shape and dtype from the headers,
  read later with safetensors' `safe_open(...).get_slice(name)[box]`. A family's
  `prepare_state` (prefixes, tied twins) runs on these handles unchanged.
- Each weight rule's `to_ours` (reshape, transpose, heads split, fused Q/K/V parts) is traced
  once on a probe: an array of the HF shape over untouched anonymous memory. When the result
  is a view of the probe (every rule made of transposes, reshapes that split axes, and slices),
  its strides say which HF box a slice of our param comes from, so a device's shard is read
  as that box and viewed into our layout (`_AxisMap`). Any other `to_ours` (Gemma's
  `w + 1` norm scales) reads the whole, small, tensor and converts it as the in-memory path does.
- Scanned stacks (`model.scan_layers`) are assembled per device from the per-layer tensors:
  one device's slice of each layer, never the whole stack.
- Values pass through float32 exactly as `rules_to_params` converts them, then take the target
  dtype, so a streamed import equals the in-memory one bit for bit.

Arrays are placed one device shard at a time (`jax.device_put` per device, then
`jax.make_array_from_single_device_arrays`), so host memory holds one shard of one param (and
the mapped pages of the one file being read) besides what the devices hold.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import mmap
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from t5x_like.interop import common
from t5x_like.interop.common import (
    FusedRule,
    ParamPath,
    Rule,
    check_param_shapes,
    check_state_dict,
    flatten_params,
)

Box = tuple[tuple[int, int], ...]  # (start, stop) per axis


@dataclasses.dataclass
class ReadStats:
    """What a streamed import read: one `(hf_key, box)` per read, and the bytes read."""

    reads: list[tuple[str, Box]] = dataclasses.field(default_factory=list)
    bytes_read: int = 0

    def record(self, key: str, box: Box, nbytes: int) -> None:
        self.reads.append((key, box))
        self.bytes_read += nbytes


def _open(path: pathlib.Path) -> Any:
    """safetensors' reader of `path`; one line naming the file when it is missing or damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="np")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"No such checkpoint file: {path}") from e
    except (SafetensorError, OSError) as e:
        raise common._unreadable(path, ".safetensors file", e) from e


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """One tensor of a safetensors file, read on demand (whole, or one box of it).

    `np.asarray(t)` reads it whole, so code written for numpy state dicts (a family's
    `prepare_state` comparing tied twins) works on these unchanged.
    """

    path: pathlib.Path
    key: str
    shape: tuple[int, ...]
    dtype: str  # The safetensors dtype name ("BF16", "F32", ...).
    stats: ReadStats | None = dataclasses.field(default=None, compare=False)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, box: Box | None = None, readers: dict[Any, Any] | None = None) -> np.ndarray:
        """The tensor, or its `box` ((start, stop) per axis), as a numpy array of its dtype.

        `readers` (file -> open reader) keeps files open across reads; without it the file is
        opened for this read alone. Either way the mapping (and the pages it touched) goes
        with the reader, so host memory does not grow with the share of the checkpoint read.
        """
        if box is None:
            box = tuple((0, n) for n in self.shape)
        if readers is None:
            readers = {}
        if self.path not in readers:
            readers[self.path] = _open(self.path)
        reader = readers[self.path]
        try:
            if self.shape:
                value = reader.get_slice(self.key)[tuple(slice(a, b) for a, b in box)]
            else:
                value = reader.get_tensor(self.key)
        except (TypeError, AttributeError) as e:  # A dtype numpy (with ml_dtypes) lacks.
            raise ValueError(
                f"{self.path}: tensor {self.key!r} has unsupported dtype {self.dtype}."
            ) from e
        del reader
        if self.stats is not None:
            self.stats.record(self.key, box, value.nbytes)
        return value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        value = self.read()
        return value if dtype is None else value.astype(dtype)


def lazy_state_dict(
    source: str | os.PathLike, stats: ReadStats | None = None
) -> dict[str, LazyTensor]:
    """`{hf_key: LazyTensor}` of an HF checkpoint directory (`model.safetensors` or a sharded
    `model.safetensors.index.json`) or a `.safetensors` file; only the headers are read.

    Raises:
      FileNotFoundError: naming a missing file (a shard the index lists included).
      ValueError: naming a truncated or damaged file.
    """
    state: dict[str, LazyTensor] = {}
    for path in common.safetensors_files(source):
        reader = _open(path)
        for key in reader.keys():
            view = reader.get_slice(key)
            state[key] = LazyTensor(
                path, key, tuple(view.get_shape()), view.get_dtype(), stats=stats
            )
        del reader
    return state


@dataclasses.dataclass(frozen=True)
class _AxisMap:
    """Where a part of `to_ours(hf_tensor)` lies in the HF tensor, when it is a strided view:
    our index (i_0, .., i_n) is HF index `origin` plus `steps[j] * i_j` along HF axis
    `axes[j]`, for each of our axes j (no carry between HF axes: checked when built)."""

    origin: tuple[int, ...]
    axes: tuple[int, ...]
    steps: tuple[int, ...]

    def hf_box(self, box: Box) -> Box:
        """The smallest HF box holding our `box` (non-empty)."""
        lo, hi = list(self.origin), [o + 1 for o in self.origin]
        for (a, b), axis, step in zip(box, self.axes, self.steps, strict=True):
            lo[axis] += a * step
            hi[axis] += (b - 1) * step
        return tuple(zip(lo, hi, strict=True))

    def view(self, hf_box: np.ndarray, box: Box) -> np.ndarray:
        """Our `box`, as a view of the read `hf_box` (C-contiguous, as `hf_box` read it)."""
        hf_box = np.ascontiguousarray(hf_box)
        strides = tuple(
            step * hf_box.strides[axis] for axis, step in zip(self.axes, self.steps, strict=True)
        )
        shape = tuple(b - a for a, b in box)
        # In bounds: `hf_box` spans each HF axis from our box's first index to its last.
        return np.lib.stride_tricks.as_strided(hf_box, shape, strides, writeable=False)


def _axis_map(part: np.ndarray, probe: np.ndarray) -> _AxisMap | None:
    """`part`'s `_AxisMap` into `probe` (float32, C-contiguous), or None when `part` is not a
    view of it that one can read as boxes."""
    if not isinstance(part, np.ndarray) or part.ndim == 0 or part.size == 0:
        return None
    if not np.may_share_memory(part, probe):  # A computed array: no new one overlaps probe.
        return None
    itemsize = probe.itemsize
    offset = part.__array_interface__["data"][0] - probe.__array_interface__["data"][0]
    if offset % itemsize or any(s < 0 or s % itemsize for s in part.strides):
        return None
    hf_shape = probe.shape
    hf_strides = [s // itemsize for s in probe.strides]
    origin = [int(i) for i in np.unravel_index(offset // itemsize, hf_shape)]
    axes, steps, reach = [], [], list(origin)
    for n, stride in zip(part.shape, (s // itemsize for s in part.strides), strict=True):
        if n == 1 or stride == 0:  # Contributes no offset.
            axes.append(0)
            steps.append(0)
            continue
        # The HF axis in whose range the stride falls; it must be a whole number of its steps.
        axis = next(k for k, s in enumerate(hf_strides) if s <= stride)
        if stride % hf_strides[axis]:
            return None
        step = stride // hf_strides[axis]
        axes.append(axis)
        steps.append(step)
        reach[axis] += (n - 1) * step
    if any(r >= n for r, n in zip(reach, hf_shape, strict=True)):
        return None  # The offsets carry into the next HF axis: not one box.
    return _AxisMap(tuple(origin), tuple(axes), tuple(steps))


def _probe(rule: Rule) -> list[tuple[tuple[int, ...], _AxisMap | None]]:
    """(shape, axis map or None) of each of our params that `rule.to_ours` makes."""
    size = math.prod(rule.hf_shape)
    if size:
        # Anonymous memory, never written: untouched pages cost nothing, whatever the size.
        buffer = mmap.mmap(-1, size * 4)
        probe = np.frombuffer(buffer, np.float32).reshape(rule.hf_shape)
    else:
        probe = np.zeros(rule.hf_shape, np.float32)
    out = rule.to_ours(probe)
    parts = list(out) if isinstance(rule, FusedRule) else [out]
    return [(tuple(np.shape(p)), _axis_map(p, probe) if size else None) for p in parts]


@dataclasses.dataclass(frozen=True)
class _Source:
    """One of our (unstacked) params: part `part` of `rule.to_ours` of `tensor`."""

    tensor: LazyTensor
    rule: Rule
    part: int
    shape: tuple[int, ...]
    axis_map: _AxisMap | None

    def reader(self, readers: dict[Any, Any]) -> Callable[[Box], np.ndarray]:
        """Reads boxes of this param as float32 (the in-memory path's conversion), through
        the open files `readers`. A param that is no view of its tensor is read whole once
        per reader, then sliced."""
        if self.axis_map is not None:
            return functools.partial(self._read_box, readers)
        whole: list[np.ndarray] = []

        def read(box: Box) -> np.ndarray:
            if not whole:  # Read and converted as rules_to_params does.
                value = self.tensor.read(readers=readers)
                out = self.rule.to_ours(np.asarray(value, np.float32))
                whole.append(out[self.part] if isinstance(self.rule, FusedRule) else out)
            return np.array(whole[0][tuple(slice(a, b) for a, b in box)], np.float32)

        return read

    def _read_box(self, readers: dict[Any, Any], box: Box) -> np.ndarray:
        if any(b <= a for a, b in box):
            return np.zeros(tuple(max(b - a, 0) for a, b in box), np.float32)
        hf_box = self.axis_map.hf_box(box)
        value = self.tensor.read(hf_box, readers)
        return np.array(self.axis_map.view(value, box), np.float32)


@dataclasses.dataclass(frozen=True)
class _Stacked:
    """A scanned stack's param: one `_Source` per layer, stacked on a leading axis."""

    layers: tuple[_Source, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.layers), *self.layers[0].shape)

    def reader(self, readers: dict[Any, Any]) -> Callable[[Box], np.ndarray]:
        """Reads boxes of the stack, one layer's slice at a time into the device's block."""
        layer_readers: dict[int, Callable[[Box], np.ndarray]] = {}

        def read(box: Box) -> np.ndarray:
            (start, stop), rest = box[0], box[1:]
            out = np.empty(tuple(b - a for a, b in box), np.float32)
            for i in range(start, stop):
                if i not in layer_readers:
                    layer_readers[i] = self.layers[i].reader(readers)
                out[i - start] = layer_readers[i](rest)
            return out

        return read


def _plan(
    state: Mapping[str, LazyTensor],
    rules: Iterable[Rule],
    scanned_stacks: Mapping[str, int] | None,
) -> dict[ParamPath, _Source | _Stacked]:
    """Where each of our params comes from, in our (scanned or unrolled) layout."""
    flat: dict[ParamPath, _Source | _Stacked] = {}
    for rule in rules:
        paths = rule.paths if isinstance(rule, FusedRule) else (rule.path,)
        for i, (path, (shape, axis_map)) in enumerate(zip(paths, _probe(rule), strict=True)):
            flat[path] = _Source(state[rule.hf_key], rule, i, shape, axis_map)
    for stack, num_layers in (scanned_stacks or {}).items():
        per_layer = [
            {p[2:]: s for p, s in flat.items() if p[:2] == (stack, f"layers_{i}")}
            for i in range(num_layers)
        ]
        for i in range(num_layers):
            for p in per_layer[i]:
                del flat[(stack, f"layers_{i}", *p)]
        for p in per_layer[0] if per_layer else ():
            flat[(stack, "layers", *p)] = _Stacked(tuple(layer[p] for layer in per_layer))
    return flat


def _place(
    shape: tuple[int, ...],
    dtype: Any,
    sharding: jax.sharding.Sharding,
    read: Callable[[Box], np.ndarray],
) -> jax.Array:
    """A global array built from this host's device shards, each read once (devices holding
    the same shard share one read) and placed before the next is read."""
    index_map = sharding.addressable_devices_indices_map(shape)
    by_box: dict[Box, list[Any]] = {}
    for device, index in index_map.items():
        box = tuple(s.indices(n)[:2] for s, n in zip(index, shape, strict=True))
        by_box.setdefault(box, []).append(device)
    placed = {}
    for box, devices in by_box.items():
        host = read(box).astype(dtype, copy=False)
        for device in devices:
            placed[device] = jax.device_put(host, device)
        del host
    return jax.make_array_from_single_device_arrays(shape, sharding, [placed[d] for d in index_map])


@dataclasses.dataclass(frozen=True)
class ImportPlan:
    """A checked checkpoint, not yet read: where each of our params comes from."""

    sources: Mapping[ParamPath, _Source | _Stacked]

    def place(self, targets: Any) -> dict[str, Any]:
        """The params as global `jax.Array`s with the shapes, dtypes and shardings of `targets`
        (a params tree of `jax.ShapeDtypeStruct`s with `sharding`, e.g. the abstract params of
        `experiment.state_shardings`), read one param at a time.

        Raises:
          ValueError: naming each param whose shape differs from the target's (or is missing).
        """
        flat_targets = flatten_params(targets)
        shapes = traverse_util.unflatten_dict(
            {p: jax.ShapeDtypeStruct(s.shape, np.float32) for p, s in self.sources.items()}
        )
        expected = {p: tuple(t.shape) for p, t in flat_targets.items()}
        check_param_shapes(shapes, expected, "Imported params do not match the model's")
        out = {}
        for path, target in flat_targets.items():
            # The files stay open while one param is placed: its devices' reads share them.
            readers: dict[Any, Any] = {}
            reader = self.sources[path].reader(readers)
            out[path] = _place(tuple(target.shape), target.dtype, target.sharding, reader)
            del reader, readers
        return traverse_util.unflatten_dict(out)


def plan_import(
    family: Any,
    source: str | os.PathLike,
    config: Any,
    *,
    stats: ReadStats | None = None,
) -> ImportPlan:
    """Reads the headers of the checkpoint at `source` and checks it as `import_weights`
    does; nothing else is read until `ImportPlan.place`.

    Args:
      family: the checkpoint's `t5x_like.interop.family.Family`.
      source: an HF checkpoint directory (sharded or not) or a `.safetensors` file.
      config: our `TransformerConfig` for it (`family.config_from_hf`); `scan_layers` picks
        the layout.
      stats: if given, records every read (tests, benchmarks).

    Raises:
      FileNotFoundError / ValueError: as `import_weights`, one line naming the file (a missing
        or damaged shard), or a message naming each missing or mis-shaped tensor.
    """
    family.check_layout(config)
    state = family.prepare_state(lazy_state_dict(source, stats), config)
    rules = family.weight_rules(config, False)
    check_state_dict(state, rules, ignored=family.ignored_keys(config))
    stacks = family.target.layer_stacks(config) if config.scan_layers else None
    return ImportPlan(_plan(state, rules, stacks))


def stream_params(
    family: Any,
    source: str | os.PathLike,
    config: Any,
    targets: Any,
    *,
    stats: ReadStats | None = None,
) -> dict[str, Any]:
    """`family.import_weights(source, config)` cast to the targets' dtypes, as global
    `jax.Array`s placed as `targets` say, each host reading only its devices' shards:
    `plan_import(...).place(targets)`."""
    return plan_import(family, source, config, stats=stats).place(targets)
