"""Device mesh, logical-axis rules and the shardings of state, batches and activations.

Parameters carry logical axis names (`nn.LogicallyPartitioned`); rules map each logical axis to
mesh axes (`data`, `fsdp`, `tensor`). `partitioning.preset` picks one of the `PRESETS` below,
or "custom" for the config's own `partitioning.rules`. Everything here is a pure function of the
config, the mesh and abstract shapes, so shardings are known before anything is compiled.

Presets (the mesh shape still comes from `mesh.*`; optimizer state is sharded like its params):
  dp       data parallel: batch over (data, fsdp); params and optimizer state replicated.
  fsdp     fully sharded data parallel (ZeRO-3): batch over (data, fsdp); every param with an
           `embed` axis (weight matrices, embeddings, norm scales) sharded over fsdp along it;
           T5's small relative-position table stays replicated.
  tp       Megatron tensor parallel: heads, kv_heads, mlp and vocab over tensor; batch over
           data; activations between layers replicated over tensor.
  fsdp_tp  both, plus pure data parallelism over `data`: batch over (data, fsdp), embed over
           fsdp, heads/kv_heads/mlp/vocab over tensor (the configs' default; T5X/MaxText-like).
A preset may leave an axis of size 1 unused; a mesh axis > 1 it never shards over is an error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from t5x_like.config import MESH_AXES
from t5x_like.errors import ConfigError

Rules = tuple[tuple[str, Any], ...]


def make_mesh(
    mesh_shape: dict[str, int],
    devices: Sequence[jax.Device] | None = None,
    num_slices: int = 1,
) -> Mesh:
    """A mesh with axes (data, fsdp, tensor), all Auto (the compiler propagates shardings).

    `num_slices` > 1: the devices form that many groups joined by a slow network (TPU slices
    over DCN; on other platforms, processes), and only `data` spans them: each slice holds
    mesh.data / num_slices rows of the data axis and all of fsdp and tensor.
    """
    shape = tuple(mesh_shape[axis] for axis in MESH_AXES)
    if devices is None:
        devices = jax.devices()
    if math.prod(shape) != len(devices):
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} devices "
            f"but {len(devices)} are available: change mesh.data/fsdp/tensor."
        )
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if num_slices == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(hybrid_device_grid(shape, devices, num_slices), MESH_AXES, axis_types=axis_types)


def hybrid_device_grid(
    shape: tuple[int, ...], devices: Sequence[Any], num_slices: int
) -> np.ndarray:
    """The [data, fsdp, tensor] device array of a multi-slice mesh: `data` split across the
    slices (devices grouped by `slice_index`, or by process when they are all in one slice)."""
    if shape[0] % num_slices:
        raise ConfigError(
            f"mesh.data={shape[0]} is not divisible by mesh.num_slices={num_slices}: only the "
            "data axis spans slices, so make mesh.data a multiple of the slice count."
        )
    # Slices where the devices span several (TPU multi-slice), else processes (hosts).
    by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
    granules = {d.slice_index if by_slice else d.process_index for d in devices}
    if len(granules) != num_slices:
        kind = "slices" if by_slice else "processes"
        raise ConfigError(
            f"mesh.num_slices={num_slices}, but the {len(devices)} devices belong to "
            f"{len(granules)} {kind}: set mesh.num_slices={len(granules)}."
        )
    from jax.experimental import mesh_utils

    ici_shape = (shape[0] // num_slices,) + tuple(shape[1:])
    dcn_shape = (num_slices,) + (1,) * (len(shape) - 1)
    return mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices, process_is_granule=not by_slice
    )


# Logical axes that are never sharded by any preset (kept explicit so the rules read as a table).
_UNSHARDED = (
    ("kv", None),
    ("layers", None),
    ("length", None),
    ("kv_length", None),
    ("abs_length", None),
    ("relpos_buckets", None),
)
# Earlier rules win when two logical axes of one array want the same mesh axis (flax semantics),
# so `batch` comes first: activations [batch, length, embed] keep fsdp for the batch.
PRESETS: dict[str, Rules] = {
    "dp": (("batch", ("data", "fsdp")),) + _UNSHARDED,
    "fsdp": (("batch", ("data", "fsdp")), ("embed", "fsdp")) + _UNSHARDED,
    "tp": (
        ("batch", "data"),
        ("vocab", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
    )
    + _UNSHARDED,
    "fsdp_tp": (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
    )
    + _UNSHARDED,
}
CUSTOM = "custom"
# The preset that uses every mesh axis: the suggestion when another leaves an axis > 1 unused.
_ALL_AXES_PRESET = "fsdp_tp"


def mesh_axes_used(rules: Rules) -> set[str]:
    """The mesh axes that some rule shards over."""
    used = set()
    for _, axes in rules:
        used.update((axes,) if isinstance(axes, str) else axes or ())
    return used


def rules_for_config(partitioning_cfg: Any, mesh_shape: dict[str, int] | None = None) -> Rules:
    """The rules of `partitioning.preset` (a `PRESETS` name, or "custom": `partitioning.rules`).

    Configs saved before presets existed have no `preset`: their `rules` are used as given.
    With `mesh_shape`, a preset that never shards over a mesh axis of size > 1 is an error.
    """
    preset = partitioning_cfg.get("preset", CUSTOM)
    given = partitioning_cfg.get("rules")
    if preset == CUSTOM:
        if given is None:
            raise ConfigError(
                "partitioning.preset='custom' needs partitioning.rules (logical axis -> mesh "
                f"axes pairs); or pick a preset: {sorted(PRESETS)}."
            )
        return rules_from_config(given)
    if preset not in PRESETS:
        raise ConfigError(
            f"partitioning.preset={preset!r} is not supported; choose one of "
            f"{sorted(PRESETS) + [CUSTOM]}."
        )
    if given is not None:
        raise ConfigError(
            f"partitioning.rules is set but partitioning.preset={preset!r} ignores it: set "
            "partitioning.preset='custom' to use your rules, or unset partitioning.rules."
        )
    rules = PRESETS[preset]
    if mesh_shape is not None:
        used = mesh_axes_used(rules)
        for axis in MESH_AXES:
            if mesh_shape.get(axis, 1) > 1 and axis not in used:
                raise ConfigError(
                    f"mesh.{axis}={mesh_shape[axis]} but partitioning.preset={preset!r} shards "
                    f"nothing over {axis}: use partitioning.preset="
                    f"'{_ALL_AXES_PRESET}' or set mesh.{axis}=1."
                )
    return rules


def rules_from_config(rules: Any) -> Rules:
    """Normalises config rules (lists or tuples) into flax's ((logical, mesh_axes), ...) form."""
    out = []
    for rule in rules:
        logical, axes = rule
        if isinstance(axes, list):
            axes = tuple(axes)
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            if axis not in MESH_AXES:
                raise ConfigError(
                    f"partitioning.rules maps '{logical}' to unknown mesh axis '{axis}'; "
                    f"mesh axes are {MESH_AXES}."
                )
        out.append((logical, axes))
    return tuple(out)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Makes `mesh` and `rules` current, so logical constraints in modules take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_sharding(mesh: Mesh, rules: Rules, logical_axes: Sequence[str | None]) -> NamedSharding:
    """The NamedSharding of an array whose dimensions have the given logical names."""
    return nn.logical_to_mesh_sharding(PartitionSpec(*logical_axes), mesh, rules)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of [batch, length] input arrays."""
    return logical_sharding(mesh, rules, ("batch", "length"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def params_shardings(abstract_boxed_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for params from their logical annotations (boxed, abstract)."""
    logical_specs = nn.get_partition_spec(abstract_boxed_params)
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    """The names along a pytree key path (dict keys, attribute names, sequence indices)."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def opt_state_shardings(
    abstract_opt_state: Any, abstract_params: Any, param_shardings: Any, mesh: Mesh
) -> Any:
    """Shards each optimizer-state leaf like the parameter it tracks, else replicates it.

    Optax states hold trees that mirror the params (Adam's mu/nu), so a state leaf whose path ends
    with a parameter's path and has that parameter's shape gets its sharding. Leaves of other
    shapes (step counts, Adafactor's factored row/column statistics) are small and replicated.
    """
    by_path = {}
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_shardings = jax.tree_util.tree_leaves(param_shardings)
    for (path, leaf), sharding in zip(flat_params, flat_shardings, strict=True):
        by_path[path_names(path)] = (leaf.shape, sharding)
    rep = replicated(mesh)

    def pick(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        key = path_names(path)
        for start in range(len(key)):
            match = by_path.get(key[start:])
            if match is not None and match[0] == leaf.shape:
                return match[1]
        return rep

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def check_divisible(abstract_tree: Any, shardings: Any, what: str = "parameter") -> None:
    """Raises ConfigError if a sharded dimension is not divisible by its mesh axes' size."""
    flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    for (path, leaf), sharding in zip(flat, jax.tree_util.tree_leaves(shardings), strict=True):
        mesh_shape = sharding.mesh.shape
        for dim, axes in enumerate(sharding.spec):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            size = math.prod(mesh_shape[a] for a in axes)
            if leaf.shape[dim] % size:
                name = "/".join(path_names(path))
                raise ConfigError(
                    f"{what} {name} has shape {tuple(leaf.shape)}; its dimension {dim} "
                    f"({leaf.shape[dim]}) is sharded over mesh axes {axes} of size {size} and is "
                    "not divisible by it. Change the model size, the mesh, or the rule for this "
                    "axis in partitioning.rules."
                )


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    """Assembles each process's rows into global jax.Arrays sharded along the batch."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
