"""Helpers shared by the Hugging Face converters: checkpoint and config I/O, weight rules, checks.

A checkpoint becomes a flat `{hf_key: np.ndarray}` state dict (from a torch or numpy state dict, a
`.safetensors` file, or a checkpoint directory) without needing torch. A model family describes
its layout as a list of `WeightRule`s (and `FusedRule`s for an HF tensor that holds several of our
params, such as GPT-2's fused QKV projection); `check_state_dict` names every missing, unexpected
or mis-shaped tensor, and `rules_to_params` / `params_to_state_dict` apply the rules either way.
`stack_layers` / `unstack_layers` (from t5x_like/layout.py) convert between unrolled (`layers_i`)
and scanned (`layers`) parameter layouts; `import_params` / `export_params` chain all of these
for one model family.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

# The layer-stacking helpers live with the other layout code; re-exported for the converters.
from t5x_like.layout import stack_layers, unstack_layers  # noqa: F401

StateDict = dict[str, np.ndarray]
ParamPath = tuple[str, ...]
Source = Mapping[str, Any] | str | os.PathLike

# A whole wrong checkpoint would otherwise produce an error message hundreds of lines long.
_MAX_LISTED = 12

# safetensors.numpy cannot read BF16 (numpy has no bfloat16); ml_dtypes, a jax dependency, can.
_SAFETENSORS_DTYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class WeightRule:
    """One HF tensor <-> one of our parameters; `to_ours` and `to_hf` are exact inverses."""

    hf_key: str
    path: ParamPath
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class FusedRule:
    """One HF tensor <-> several of our parameters (e.g. GPT-2's `c_attn`, Q, K and V side by
    side). `to_ours` returns the parts in `paths` order; `to_hf` takes them in that order."""

    hf_key: str
    paths: tuple[ParamPath, ...]
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], Sequence[np.ndarray]]
    to_hf: Callable[..., np.ndarray]


Rule = WeightRule | FusedRule


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def copy_rule(hf_key: str, path: ParamPath, shape: Sequence[int]) -> WeightRule:
    """Same layout on both sides (norm scales, embedding tables, relative-bias tables)."""
    return WeightRule(hf_key, tuple(path), tuple(shape), _identity, _identity)


def linear_rule(hf_key: str, path: ParamPath, in_dim: int, out_dim: int) -> WeightRule:
    """A torch `nn.Linear` weight [out, in] <-> our kernel [in, out]."""
    return WeightRule(hf_key, tuple(path), (out_dim, in_dim), np.transpose, np.transpose)


def reshape_rule(
    hf_key: str, path: ParamPath, hf_shape: Sequence[int], shape: Sequence[int]
) -> WeightRule:
    """Same values in a different shape, e.g. a Q/K/V bias [heads * head_dim] <-> [heads, head_dim]
    (row-major on both sides, so heads stay head-major)."""
    hf_shape, shape = tuple(hf_shape), tuple(shape)
    return WeightRule(
        hf_key, tuple(path), hf_shape, lambda x: x.reshape(shape), lambda x: x.reshape(hf_shape)
    )


def heads_in_rule(
    hf_key: str, path: ParamPath, d_model: int, heads: int, head_dim: int
) -> WeightRule:
    """A Q/K/V projection: torch weight [heads * head_dim, d_model] (head-major rows) <-> our
    kernel [d_model, heads, head_dim]."""
    return WeightRule(
        hf_key,
        tuple(path),
        (heads * head_dim, d_model),
        lambda w: w.T.reshape(d_model, heads, head_dim),
        lambda k: k.reshape(d_model, heads * head_dim).T,
    )


def heads_out_rule(
    hf_key: str, path: ParamPath, heads: int, head_dim: int, d_model: int
) -> WeightRule:
    """An attention output projection: torch weight [d_model, heads * head_dim] <-> our kernel
    [heads, head_dim, d_model]."""
    return WeightRule(
        hf_key,
        tuple(path),
        (d_model, heads * head_dim),
        lambda w: w.T.reshape(heads, head_dim, d_model),
        lambda k: k.reshape(heads * head_dim, d_model).T,
    )


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device; floating dtypes upcast to float32, which is lossless for
    bf16/f16) or an array-like, as a numpy array."""
    if hasattr(value, "detach"):  # torch.Tensor, recognised without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # numpy has no bfloat16
        return value.numpy()
    return np.asarray(value)


def _unreadable(path: str | os.PathLike, what: str, error: BaseException) -> ValueError:
    """One line naming a checkpoint file that cannot be read, and what to do about it."""
    detail = " ".join(str(error).split()) or type(error).__name__
    return ValueError(
        f"{path}: not a readable {what} ({detail}); the file is truncated or damaged: "
        "download or export the checkpoint again."
    )


def read_safetensors(path: str | os.PathLike) -> StateDict:
    """All tensors of a `.safetensors` file as numpy arrays (bfloat16 via ml_dtypes).

    Raises:
      ValueError: naming the file, when it is truncated or not safetensors.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except TypeError:  # "data type 'bfloat16' not understood"
        return _read_safetensors_raw(path)
    except SafetensorError as e:
        raise _unreadable(path, ".safetensors file", e) from e


def _read_safetensors_raw(path: str | os.PathLike) -> StateDict:
    # The format: 8-byte little-endian header size, a JSON header, then the raw tensor bytes.
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        if size < 8 or 8 + header_size > size:
            raise _unreadable(path, ".safetensors file", EOFError("header past the end"))
        try:
            header = json.loads(f.read(header_size))
        except ValueError as e:  # JSON or UTF-8
            raise _unreadable(path, ".safetensors file", e) from e
    tensors = [info for key, info in header.items() if key != "__metadata__"]
    end = max((info["data_offsets"][1] for info in tensors), default=0)
    if 8 + header_size + end > size:
        raise _unreadable(path, ".safetensors file", EOFError("tensor data past the end"))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    state = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}.")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        start, end = info["data_offsets"]
        state[key] = data[start:end].view(dtype).reshape(info["shape"])
    return state


def save_safetensors(state: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes a state dict as `.safetensors`, tagged so transformers loads it as a torch file."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_hf_checkpoint(
    state: Mapping[str, np.ndarray],
    hf_config: Mapping[str, Any],
    directory: str | os.PathLike,
    *,
    tied_keys: Sequence[str] = (),
) -> None:
    """Writes `config.json` and `model.safetensors` for transformers' `from_pretrained`.

    Like transformers' own `save_pretrained`, tensors tied to another (`tied_keys`) are not
    written: loading ties them again.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(
        {k: v for k, v in state.items() if k not in tied_keys}, directory / "model.safetensors"
    )
    config_json = json.dumps(dict(hf_config), indent=2, sort_keys=True)
    (directory / "config.json").write_text(config_json + "\n")


def safetensors_files(source: str | os.PathLike) -> list[pathlib.Path]:
    """The `.safetensors` files of an HF checkpoint directory (the shards its
    `model.safetensors.index.json` lists, or `model.safetensors`) or of one such file.

    Raises:
      FileNotFoundError: naming the missing file (a shard the index lists included).
      ValueError: for a path that is neither, or an index without a `weight_map`.
    """
    path = pathlib.Path(source)
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise _unreadable(index, "sharded index", KeyError("no weight_map of file names"))
            shards = [path / shard for shard in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.is_file():
                    raise FileNotFoundError(
                        f"{shard}: a shard that {index.name} lists is missing; download or "
                        "export the checkpoint again."
                    )
            return shards
        if (path / "model.safetensors").exists():
            return [path / "model.safetensors"]
        raise FileNotFoundError(
            f"{path} holds neither model.safetensors nor model.safetensors.index.json. For a "
            "pytorch_model.bin checkpoint, pass torch.load(path, weights_only=True) instead."
        )
    if path.suffix == ".safetensors":
        if not path.exists():
            raise FileNotFoundError(f"No such checkpoint file: {path}")
        return [path]
    raise ValueError(
        f"Cannot read weights from {str(source)!r}: expected a state dict, a .safetensors file or "
        "an HF checkpoint directory."
    )


def load_state_dict(source: Source) -> StateDict:
    """A flat `{hf_key: np.ndarray}` from any of: a torch or numpy state dict, a `.safetensors`
    file, or an HF checkpoint directory (`model.safetensors` or a sharded
    `model.safetensors.index.json`). Files are read whole, without torch
    (`t5x_like.interop.streaming` reads them shard by shard onto a mesh instead)."""
    if isinstance(source, Mapping):
        return {str(k): to_numpy(v) for k, v in source.items()}
    state: StateDict = {}
    for path in safetensors_files(source):
        state.update(read_safetensors(path))
    return state


def read_hf_config(source: Any) -> dict[str, Any]:
    """An HF config as a dict, from a transformers config object, a dict, a `config.json` path
    or a checkpoint directory."""
    if hasattr(source, "to_dict"):
        return source.to_dict()
    if isinstance(source, Mapping):
        return dict(source)
    path = pathlib.Path(source)
    if path.is_dir():
        path = path / "config.json"
    return _read_json(path)


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    """The JSON object of `path`; ValueError naming the file when it is not one."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as e:  # JSON or UTF-8
        raise _unreadable(path, "JSON file", e) from e
    if not isinstance(value, dict):
        raise _unreadable(path, "JSON file", TypeError(f"a {type(value).__name__}, not an object"))
    return value


def _raise_mismatch(
    what: str,
    missing: Mapping[str, tuple[int, ...]],
    unexpected: Mapping[str, tuple[int, ...]],
    wrong: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
) -> None:
    lines = [f"missing {k!r} (expected shape {shape})" for k, shape in missing.items()]
    lines += [f"unexpected {k!r} (shape {shape})" for k, shape in unexpected.items()]
    lines += [f"{k!r}: expected shape {exp}, got {got}" for k, (exp, got) in wrong.items()]
    if not lines:
        return
    shown = lines[:_MAX_LISTED]
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more")
    raise ValueError(
        f"{what}: {len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong "
        "shape:\n  " + "\n  ".join(shown)
    )


def check_state_dict(
    state: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    ignored: Iterable[str] = (),
    what: str = "HF state dict does not match the config",
) -> None:
    """Raises a ValueError naming every missing, unexpected (not in `ignored`) or mis-shaped
    tensor of `state` with respect to `rules`."""
    expected = {r.hf_key: r.hf_shape for r in rules}
    ignored = set(ignored)
    _raise_mismatch(
        what,
        {k: s for k, s in expected.items() if k not in state},
        {k: tuple(v.shape) for k, v in state.items() if k not in expected and k not in ignored},
        {
            k: (s, tuple(state[k].shape))
            for k, s in expected.items()
            if k in state and tuple(state[k].shape) != s
        },
    )


def flatten_params(params: Any) -> dict[ParamPath, Any]:
    """`{path: leaf}` of a (possibly logically boxed, possibly Frozen) parameter tree."""
    return traverse_util.flatten_dict(nn.meta.unbox(params))


def check_param_shapes(
    params: Any, expected: Mapping[ParamPath, tuple[int, ...]], what: str
) -> None:
    """Raises a ValueError naming every missing, unexpected or mis-shaped parameter."""
    flat = {path: tuple(np.shape(x)) for path, x in flatten_params(params).items()}
    name = "/".join
    _raise_mismatch(
        what,
        {name(p): s for p, s in expected.items() if p not in flat},
        {name(p): s for p, s in flat.items() if p not in expected},
        {name(p): (s, flat[p]) for p, s in expected.items() if p in flat and flat[p] != s},
    )


def param_shapes(module: nn.Module, *init_args: Any) -> dict[ParamPath, tuple[int, ...]]:
    """The shape of each of `module`'s params, traced abstractly (nothing is allocated)."""
    variables = jax.eval_shape(module.init, jax.random.key(0), *init_args)
    return {p: tuple(x.shape) for p, x in flatten_params(variables["params"]).items()}


def int_inputs(*shapes: tuple[int, ...]) -> tuple[jax.ShapeDtypeStruct, ...]:
    """Abstract int32 token inputs for `param_shapes`."""
    return tuple(jax.ShapeDtypeStruct(s, jnp.int32) for s in shapes)


def rules_to_params(state: Mapping[str, np.ndarray], rules: Sequence[Rule]) -> dict:
    """Our nested (unrolled) parameter tree of float32 numpy arrays from a checked state dict."""
    flat = {}
    for r in rules:
        value = np.asarray(state[r.hf_key], np.float32)
        if isinstance(r, FusedRule):
            for path, part in zip(r.paths, r.to_ours(value), strict=True):
                flat[path] = np.ascontiguousarray(part)
        else:
            flat[r.path] = np.ascontiguousarray(r.to_ours(value))
    return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params: Any, rules: Sequence[Rule]) -> StateDict:
    """The HF state dict (float32 numpy, in rule order) of a checked, unrolled parameter tree."""
    flat = flatten_params(jax.device_get(params))

    def to_hf(r: Rule) -> np.ndarray:
        if isinstance(r, FusedRule):
            return r.to_hf(*(flat[p] for p in r.paths))
        return r.to_hf(flat[r.path])

    # np.array copies: aliases (tied tensors) and the caller's params must not share memory with
    # the result.
    return {r.hf_key: np.array(to_hf(r), np.float32, order="C") for r in rules}


def add_missing_prefix(
    state: Mapping[str, np.ndarray], prefix: str, keep: Iterable[str] = ()
) -> StateDict:
    """`state` with `prefix` before every key except those in `keep`, unless some key already
    has it: the state dict of a bare base model (e.g. the Hub's GPT-2 checkpoint, saved from
    `GPT2Model`, whose keys lack the `transformer.` of `GPT2LMHeadModel`)."""
    if any(k.startswith(prefix) for k in state):
        return dict(state)
    keep = set(keep)
    return {k if k in keep else prefix + k: v for k, v in state.items()}


def canonical_tied_head(
    state: Mapping[str, np.ndarray], head_key: str, embedding_key: str, tied: bool
) -> StateDict:
    """`state` without the LM head when `tied` (our tied model computes logits from the token
    embedding); raises ValueError if that head differs from the embedding."""
    state = dict(state)
    if tied:
        head = state.pop(head_key, None)
        table = state.get(embedding_key)
        if head is not None and table is not None and not np.array_equal(head, table):
            raise ValueError(
                f"{head_key!r} differs from {embedding_key!r}, but the config ties the LM head "
                "to the token embedding (tie_embeddings=True); import it with "
                "tie_embeddings=False to keep its own head."
            )
    return state


def import_params(
    state: Mapping[str, np.ndarray],
    rules: Sequence[Rule],
    expected_shapes: Mapping[ParamPath, tuple[int, ...]],
    *,
    ignored: Iterable[str] = (),
    scanned_stacks: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Checks `state` against `rules`, converts it, stacks the layers of each of `scanned_stacks`
    (stack name -> number of layers; None: leave unrolled), and checks the result against the
    model's `expected_shapes` (which guards against rules drifting from the model's names)."""
    check_state_dict(state, rules, ignored=ignored)
    params = rules_to_params(state, rules)
    for stack, num_layers in (scanned_stacks or {}).items():
        params[stack] = stack_layers(params[stack], num_layers)
    check_param_shapes(params, expected_shapes, "Imported params do not match the model's")
    return params


def export_params(
    params: Any,
    rules: Sequence[Rule],
    expected_shapes: Mapping[ParamPath, tuple[int, ...]],
    *,
    scanned_stacks: Mapping[str, int] | None = None,
) -> StateDict:
    """Inverse of `import_params`: checks `params` (plain or logically boxed, numpy or fully
    addressable jax arrays) against `expected_shapes`, unstacks `scanned_stacks` and applies
    `rules`."""
    params = jax.device_get(nn.meta.unbox(params))
    check_param_shapes(params, expected_shapes, "params do not match the config")
    params = dict(params)
    for stack, num_layers in (scanned_stacks or {}).items():
        params[stack] = unstack_layers(params[stack], num_layers)
    return params_to_state_dict(params, rules)
