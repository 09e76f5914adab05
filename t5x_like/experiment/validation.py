"""Checks across config sections and against the run's devices, run once per experiment build.

Single-field checks (types, allowed values, ranges) are declared with the fields in
t5x_like/config.py; `validate_config` runs them first, then the checks here that relate fields
to each other, to the model family, the data task, the device mesh and the processes.
"""

from __future__ import annotations

import math
import os
import resource
from typing import Any

import flax.linen as nn
import jax

from t5x_like import config as config_lib
from t5x_like import models, partitioning
from t5x_like import workdir as workdir_lib
from t5x_like.config import MESH_AXES
from t5x_like.data import sharded_iterator, tasks
from t5x_like.errors import ConfigError
from t5x_like.training import optimizers

# Token ids are int32 everywhere (batches, embedding lookups, decoding).
MAX_VOCAB_SIZE = 2**31 - 1
# A model whose rough size (embeddings + dense layers, float32, with two Adam moments) is
# below this fraction of the memory limit is not counted exactly (that traces its init).
_EXACT_COUNT_FRACTION = 0.02
# cgroup v2 and v1 memory limits of this process's container.
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_positive(section: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = section[name]
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{prefix}.{name}={value!r} must be a positive integer.",
        )


def resolve_mesh_shape(mesh_cfg: Any, device_count: int) -> dict[str, int]:
    """Mesh axis sizes with a single -1 filled in so that their product is `device_count`."""
    sizes = {axis: mesh_cfg[axis] for axis in MESH_AXES}
    for axis, size in sizes.items():
        config_lib.check_field(f"mesh.{axis}", size)
    free = [axis for axis, size in sizes.items() if size == -1]
    _require(
        len(free) <= 1,
        f"Only one mesh axis may be -1 (all remaining devices), got {free}: give every other "
        "mesh.data/fsdp/tensor a positive size.",
    )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        _require(
            device_count % fixed == 0,
            f"mesh {sizes} cannot fill {device_count} devices: the fixed axes' product {fixed} "
            f"does not divide the device count. Change mesh.* so their product divides "
            f"{device_count}.",
        )
        sizes[free[0]] = device_count // fixed
    product = math.prod(sizes.values())
    _require(
        product == device_count,
        f"mesh data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = "
        f"{product} devices, but this run has {device_count}. Set mesh.data/fsdp/tensor so the "
        f"product is {device_count} (or set one of them to -1).",
    )
    return sizes


def _validate_task(data: Any) -> tasks.Task:
    """The data section's `tasks.Task`, span corruption's sentinels checked."""
    try:
        task = tasks.Task.from_config(data)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if task.name == "span_corruption":
        _require(
            data.extra_ids >= task.max_noise_spans,
            f"data.extra_ids={data.extra_ids} is too few for span corruption: an example can "
            f"have {task.max_noise_spans} noise spans, each needing its own sentinel. Set "
            f"data.extra_ids >= {task.max_noise_spans} (T5 uses 100).",
        )
    return task


def _check_attention_impl(m: Any) -> None:
    if m.attention_impl != "cudnn":
        return
    _require(
        m.dtype in ("bfloat16", "float16"),
        f"model.attention_impl='cudnn' needs a 16-bit model.dtype (cuDNN's fused attention "
        f"kernels take bfloat16/float16), not {m.dtype!r}: set --config.model.dtype=bfloat16 "
        "or use model.attention_impl='einsum'.",
    )
    _require(
        m.position != "relative",
        "model.attention_impl='cudnn' is not wired for T5's learned relative position bias "
        "(model.position='relative'): use model.attention_impl='einsum' for this model.",
    )


def _validate_model(m: Any, seq_len: int, seq_len_field: str) -> None:
    _check_attention_impl(m)
    if m.position == "relative":
        _check_positive(
            m, "model", ("relative_attention_num_buckets", "relative_attention_max_distance")
        )
        _require(
            m.relative_attention_num_buckets >= 4,
            f"model.relative_attention_num_buckets={m.relative_attention_num_buckets} must be "
            ">= 4 (half exact, half logarithmic buckets; T5 uses 32).",
        )
    if m.head_dim is None:
        _require(
            m.d_model % m.num_heads == 0,
            f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}: "
            "change one of them or set model.head_dim explicitly.",
        )
    if m.num_kv_heads is not None:
        _require(
            m.num_heads % m.num_kv_heads == 0,
            f"model.num_heads={m.num_heads} is not a multiple of model.num_kv_heads="
            f"{m.num_kv_heads}: each KV head must serve the same number of query heads.",
        )
    head_dim = m.head_dim or m.d_model // m.num_heads
    if m.position == "rope":
        _require(
            head_dim % 2 == 0,
            f"model.position='rope' needs an even head dim (it rotates pairs of dims), but "
            f"model.head_dim (or model.d_model / model.num_heads) is {head_dim}: make it even "
            "or choose another model.position.",
        )
    if m.position == "learned":
        _require(
            seq_len <= m.max_len,
            f"{seq_len_field}={seq_len} exceeds model.max_len={m.max_len} of the learned "
            f"position table: raise model.max_len or lower {seq_len_field}.",
        )


def _check_batch(cfg: Any, mesh: dict[str, int], process_count: int) -> None:
    """The batch against the mesh's data-parallel size, the micro-batches and the processes."""
    train = cfg.train
    num_slices = cfg.mesh.num_slices
    _require(
        isinstance(num_slices, int) and num_slices >= 1 and mesh["data"] % num_slices == 0,
        f"mesh.num_slices={num_slices!r} must be a positive integer dividing mesh.data="
        f"{mesh['data']}: only the data axis spans slices.",
    )
    batch_shards = mesh["data"] * mesh["fsdp"]
    _require(
        train.batch_size % batch_shards == 0,
        f"train.batch_size={train.batch_size} is not divisible by the data-parallel size "
        f"mesh.data x mesh.fsdp = {batch_shards}: use a multiple of {batch_shards}.",
    )
    microbatches = train.microbatches
    _require(
        train.batch_size % (microbatches * batch_shards) == 0,
        f"train.batch_size={train.batch_size} cannot be split into train.microbatches="
        f"{microbatches} micro-batches that each divide over the data-parallel size "
        f"mesh.data x mesh.fsdp = {batch_shards}: use a batch size that is a multiple of "
        f"{microbatches * batch_shards}, or fewer microbatches.",
    )
    _require(
        train.batch_size % process_count == 0,
        f"train.batch_size={train.batch_size} is not divisible by the {process_count} processes.",
    )
    sharded_iterator.resolve_num_shards(cfg, process_count)


def _check_head_sharding(cfg: Any, mesh: dict[str, int]) -> None:
    """The heads against the mesh axes the partitioning rules shard them over."""
    heads = cfg.model.num_heads
    kv_heads = cfg.model.num_kv_heads or heads
    rules = dict(partitioning.rules_for_config(cfg.partitioning, mesh))
    for logical, count, field in (
        ("heads", heads, "num_heads"),
        ("kv_heads", kv_heads, "num_kv_heads"),
    ):
        axes = rules.get(logical)
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.get(a, 1) for a in axes)
        _require(
            count % size == 0,
            f"model.{field}={count} is not divisible by the mesh axes {axes} (size {size}) that "
            f"'{logical}' is sharded over: change mesh.tensor, model.{field}, or the "
            f"'{logical}' rule in partitioning.rules.",
        )


def _model_vocab_size(cfg: Any) -> int | None:
    """model.vocab_size, or the size a vocabulary trained to data.vocab_size resolves it to
    (rounded up to 128); None when only a vocabulary file would tell."""
    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size
    if cfg.data.vocab_path is not None or not cfg.data.vocab_size:
        return None
    return -(-(cfg.data.vocab_size + (cfg.data.extra_ids or 0)) // 128) * 128


def state_bytes(cfg: Any) -> tuple[int, int] | None:
    """(params, optimizer state) bytes of the model and optimizer `cfg` describes, counted
    from shapes alone (nothing is allocated or compiled); None when the vocabulary size is
    known only from a vocabulary file. Call on a config `validate_config` accepted."""
    vocab_size = _model_vocab_size(cfg)
    if vocab_size is None:
        return None
    family = models.get(cfg.model.family)
    module = family.build({**cfg.model.to_dict(), "vocab_size": vocab_size})
    boxed = jax.eval_shape(lambda rng: family.init_params(module, rng, 1), jax.random.PRNGKey(0))
    params = nn.unbox(boxed)
    tx, _ = optimizers.make_optimizer(cfg.optimizer, cfg.train.steps, cfg.train.nan_policy)
    opt_state = jax.eval_shape(tx.init, params)

    def nbytes(tree: Any) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    return nbytes(params), nbytes(opt_state)


def host_memory_limit() -> tuple[int, str]:
    """(bytes, what sets them): the least of this host's RAM, the container's cgroup memory
    limit and the process's address-space limit (ulimit -v)."""
    limits = [(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the host's RAM")]
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append((int(text), f"the cgroup memory limit ({path})"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((soft, "the address-space limit (ulimit -v)"))
    return min(limits)


def _device_memory_limit() -> tuple[int, str] | None:
    """(bytes, platform) of one accelerator of this process; None on CPU (host memory)."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return (int(limit), device.platform) if limit else None


def _rough_state_bytes(m: Any, vocab_size: int) -> float:
    """A quick guess of the float32 state with two Adam moments (embeddings + dense layers),
    to skip the exact count for models far from any limit."""
    mlp_dim = m.mlp_dim or 4 * m.d_model
    dense = m.num_layers * (4 * m.d_model**2 + 3 * m.d_model * mlp_dim)
    return 3 * 4 * (vocab_size * m.d_model + dense)


def _check_vocab_ids(cfg: Any) -> None:
    vocab_size = _model_vocab_size(cfg)
    _require(
        vocab_size is None or vocab_size <= MAX_VOCAB_SIZE,
        f"model.vocab_size={vocab_size} does not fit the int32 token ids (at most "
        f"{MAX_VOCAB_SIZE}): lower model.vocab_size (or data.vocab_size).",
    )


def check_memory(cfg: Any, device_count: int, process_count: int = 1) -> None:
    """Refuses a model whose params and optimizer state cannot fit this run's memory even
    fully sharded: per host when the devices are CPUs (they share its memory), else per
    accelerator. Activations and compilation need more on top: passing promises nothing.

    Raises:
      ConfigError: with the figures (needed and available) and the fields to lower.
    """
    m = cfg.model
    vocab_size = _model_vocab_size(cfg)
    if vocab_size is None:
        return
    fmt = workdir_lib.format_bytes
    device = _device_memory_limit()
    if device is None:
        limit, source = host_memory_limit()
        share, unit, what = process_count, "host", f"this host has {fmt(limit)} ({source})"
    else:
        limit, platform = device
        share, unit, what = device_count, "device", f"a {platform} device has {fmt(limit)}"
    if _rough_state_bytes(m, vocab_size) / share < _EXACT_COUNT_FRACTION * limit:
        return
    counted = state_bytes(cfg)
    assert counted is not None
    params, opt_state = counted
    needed = (params + opt_state) / share
    _require(
        needed <= limit,
        f"model.vocab_size={vocab_size}, model.d_model={m.d_model}, model.num_layers="
        f"{m.num_layers}: the params ({fmt(params)}) and optimizer state ({fmt(opt_state)}) "
        f"need at least {fmt(needed)} per {unit} even split over {share} {unit}(s), but "
        f"{what}. Lower model.vocab_size, model.d_model or model.num_layers, or run on more "
        f"{unit}s.",
    )


def check_before_training(cfg: Any, workdir: str, device_count: int, process_count: int) -> None:
    """What a training run checks before it builds anything: the config (`validate_config`),
    params and optimizer state that can fit memory (`check_memory`), and a workdir that is a
    directory, writable, with room for one checkpoint.

    Raises:
      ConfigError: naming the field or --workdir, the figure and the fix.
    """
    validate_config(cfg, device_count, process_count)
    check_memory(cfg, device_count, process_count)
    counted = state_bytes(cfg)
    workdir_lib.check_workdir(workdir, sum(counted) if counted else 0)


def validate_config(cfg: Any, device_count: int, process_count: int = 1) -> dict[str, int]:
    """Checks `cfg` for this run's devices; returns the resolved mesh shape.

    Raises:
      ConfigError: naming the offending field and the change that fixes it.
    """
    config_lib.check_fields(cfg)
    data, train, opt = cfg.data, cfg.train, cfg.optimizer
    _require(
        data.vocab_path is not None or (isinstance(data.vocab_size, int) and data.vocab_size > 0),
        "Set data.vocab_path to a SentencePiece model or data.vocab_size > 0 to train one.",
    )
    family = models.get(cfg.model.family)  # ConfigError naming the registered families.
    task = _validate_task(data)
    # What the family needs of the config: the task's rows, its own fields, what it supports.
    family.validate(cfg, task)
    _validate_model(cfg.model, *task.longest_row)
    if opt.schedule == "cosine":
        _require(
            opt.warmup_steps < train.steps,
            f"optimizer.warmup_steps={opt.warmup_steps} must be smaller than train.steps="
            f"{train.steps} for the cosine schedule: lower optimizer.warmup_steps or raise "
            "train.steps.",
        )
    _require(
        cfg.model.get("final_logit_softcap") is None or not train.loss_chunk_size,
        f"model.final_logit_softcap={cfg.model.get('final_logit_softcap')} needs the full "
        f"logits, which train.loss_chunk_size={train.loss_chunk_size} never builds: set "
        "train.loss_chunk_size=0.",
    )
    mesh = resolve_mesh_shape(cfg.mesh, device_count)
    _check_batch(cfg, mesh, process_count)
    _check_head_sharding(cfg, mesh)
    _check_vocab_ids(cfg)
    return mesh


def validate_topology(
    cfg: Any, num_devices: int, num_processes: int = 1, num_slices: int = 1
) -> dict[str, int]:
    """`validate_config` for a job described by its size alone, without creating devices:
    `num_devices` accelerators in all, `num_processes` processes (JAX processes: one per TPU
    host, one per GPU under SLURM) and `num_slices` TPU slices joined by the data-center
    network (1 elsewhere). Launch recipes are checked this way for pods nobody has at hand.

    Besides `validate_config`, it refuses what `partitioning.make_mesh` would refuse on that
    job: processes holding unequal device counts, a slice split between hosts, and a
    `mesh.num_slices` other than the job's slices (or, with one slice, its processes).

    Returns:
      The resolved mesh shape.

    Raises:
      ConfigError: naming the field and the change that fixes it.
    """
    for name, value in (
        ("devices", num_devices),
        ("processes", num_processes),
        ("slices", num_slices),
    ):
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"The job's number of {name} must be a positive integer, got {value!r}.",
        )
    _require(
        num_devices % num_processes == 0,
        f"{num_devices} devices cannot be split evenly between {num_processes} processes: "
        "every process of a JAX job holds the same number of devices.",
    )
    _require(
        num_processes % num_slices == 0,
        f"{num_processes} processes cannot be split evenly between {num_slices} slices: "
        "every slice has the same number of hosts.",
    )
    mesh_slices = cfg.mesh.num_slices
    if num_slices > 1:
        _require(
            mesh_slices == num_slices,
            f"mesh.num_slices={mesh_slices!r}, but this job spans {num_slices} slices: set "
            f"--config.mesh.num_slices={num_slices} so that only the data axis crosses the "
            "data-center network.",
        )
    elif isinstance(mesh_slices, int) and mesh_slices > 1:
        # Without TPU slices make_mesh groups the devices by process instead.
        fix = "1" if num_processes == 1 else f"{num_processes} (one group per process) or 1"
        _require(
            mesh_slices == num_processes,
            f"mesh.num_slices={mesh_slices}, but this job has one slice and {num_processes} "
            f"process(es), which are what mesh.num_slices groups devices by off TPU pods: set "
            f"mesh.num_slices={fix}.",
        )
    return validate_config(cfg, num_devices, num_processes)
