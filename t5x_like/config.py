"""Experiment config checks: every inconsistency becomes a clear error before any compilation.

Configs are ml_collections ConfigDicts (files in configs/). `validate_config` checks one against
the devices of this run and raises `ConfigError` naming the field and what to change.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ml_collections import config_dict

from t5x_like.layers import config as layer_config

FAMILIES = ("decoder_only", "encoder_decoder")
OPTIMIZERS = ("adamw", "adafactor", "sgd")
NAN_POLICIES = ("stop", "skip")  # What a non-finite loss or gradient norm does to a run.
SCHEDULES = ("cosine", "rsqrt", "constant")
MESH_AXES = ("data", "fsdp", "tensor")


class ConfigError(ValueError):
    """A config value that cannot work; the message says which field and how to fix it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(value: Any, field: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{field}={value!r} is not supported; choose one of {choices}.")


# The type of each field validate_config reads. ml_collections refuses an override of another
# type, but not a field first written with the wrong type in a config file, nor one saved as null
# in config.json (configs/saved_run.py accepts any type there). None is left to the range checks
# below, since several fields are optional.
_INT, _NUMBER, _BOOL, _STR = "an integer", "a number", "True or False", "a string"
_FIELD_TYPES = {
    "": {_INT: "seed", _STR: "name"},
    "model": {
        _INT: "vocab_size d_model num_layers num_decoder_layers num_heads num_kv_heads head_dim "
        "mlp_dim max_len relative_attention_num_buckets relative_attention_max_distance",
        _NUMBER: "norm_eps rope_theta dropout_rate",
        _BOOL: "tie_embeddings scale_tied_logits use_bias scan_layers scale_attention_logits",
        _STR: "family activation norm norm_position position dtype param_dtype remat "
        "attention_impl",
    },
    "data": {
        _INT: "seq_len inputs_len targets_len vocab_size extra_ids num_shards",
        _NUMBER: "noise_density mean_noise_span_length",
        _BOOL: "pack",
        _STR: "task dataset data_dir train_split eval_split text_key inputs_key targets_key "
        "inputs_prefix vocab_path vocab_dataset",
    },
    "train": {
        _INT: "steps batch_size log_every eval_every eval_batches checkpoint_every max_to_keep "
        "decode_batches init_step microbatches loss_chunk_size",
        _NUMBER: "z_loss label_smoothing",
        _BOOL: "eval_at_start async_checkpoint allow_config_change",
        _STR: "init_from compilation_cache_dir nan_policy",
    },
    "optimizer": {
        _INT: "warmup_steps",
        _NUMBER: "learning_rate end_lr_fraction weight_decay b1 b2 eps grad_clip_norm",
        _STR: "name schedule",
    },
    "mesh": {_INT: "data fsdp tensor num_slices"},
    "partitioning": {_STR: "preset"},
}
_IS_TYPE = {
    _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    _NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    _BOOL: lambda v: isinstance(v, bool),
    _STR: lambda v: isinstance(v, str),
}


def check_field_types(cfg: Any) -> None:
    """ConfigError for the first known field whose value has the wrong type (None passes)."""
    for section_name, kinds in _FIELD_TYPES.items():
        section = cfg[section_name] if section_name else cfg
        if not hasattr(section, "get"):
            continue
        for kind, names in kinds.items():
            for name in names.split():
                value = section.get(name)
                field = f"{section_name}.{name}".lstrip(".")
                _require(
                    value is None or _IS_TYPE[kind](value),
                    f"{field}={value!r} is a {type(value).__name__}, but it must be {kind}: fix "
                    f"the config file, or override it with --config.{field}=<{kind}>.",
                )


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
        _require(
            isinstance(size, int) and (size > 0 or size == -1),
            f"mesh.{axis}={size!r} must be a positive integer or -1 (all remaining devices).",
        )
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


def _validate_data(cfg: Any) -> Any:
    """Checks the data section against the model family; returns its `tasks.Task`."""
    # Imported here: the task module pulls in the data package's numpy code only.
    from t5x_like.data import tasks

    data = cfg.data
    try:
        task = tasks.Task.from_config(data)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    family = cfg.model.family
    if family == "encoder_decoder":
        _require(
            task.is_encoder_decoder,
            f"data.task={task.name!r} makes decoder-only rows but model.family="
            f"'encoder_decoder'; use one of {tasks.ENCODER_DECODER_TASKS}.",
        )
    else:
        _require(
            not task.is_encoder_decoder,
            f"data.task={task.name!r} makes encoder-decoder rows but model.family={family!r}; "
            "use data.task='causal_lm' or model.family='encoder_decoder'.",
        )
    extra_ids = data.get("extra_ids", 0)
    _require(
        isinstance(extra_ids, int) and extra_ids >= 0,
        f"data.extra_ids={extra_ids!r} must be an integer >= 0.",
    )
    if task.name == "span_corruption":
        _require(
            extra_ids >= task.max_noise_spans,
            f"data.extra_ids={extra_ids} is too few for span corruption: an example can have "
            f"{task.max_noise_spans} noise spans, each needing its own sentinel. Set "
            f"data.extra_ids >= {task.max_noise_spans} (T5 uses 100).",
        )
    return task


def _check_attention_impl(m: Any) -> None:
    impl = m.get("attention_impl", "einsum")
    _check_choice(impl, "model.attention_impl", layer_config.ATTENTION_IMPLS)
    if impl != "cudnn":
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
    _check_positive(m, "model", ("d_model", "num_layers", "num_heads", "mlp_dim"))
    _check_choice(m.activation, "model.activation", layer_config.ACTIVATIONS)
    _check_choice(m.norm, "model.norm", layer_config.NORMS)
    _check_choice(m.position, "model.position", layer_config.POSITIONS)
    _check_choice(m.dtype, "model.dtype", layer_config.DTYPES)
    _check_choice(m.param_dtype, "model.param_dtype", layer_config.DTYPES)
    _check_choice(m.remat, "model.remat", layer_config.REMAT_POLICIES)
    _check_choice(m.get("norm_position", "pre"), "model.norm_position", layer_config.NORM_POSITIONS)
    _check_attention_impl(m)
    if m.family == "encoder_decoder" and m.get("num_decoder_layers") is not None:
        _check_positive(m, "model", ("num_decoder_layers",))
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
    else:
        _check_positive(m, "model", ("head_dim",))
    if m.num_kv_heads is not None:
        _check_positive(m, "model", ("num_kv_heads",))
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
    _require(
        0.0 <= m.dropout_rate < 1.0,
        f"model.dropout_rate={m.dropout_rate} must be in [0, 1): the fraction of activations "
        "dropped in training (0 disables dropout; T5 fine-tunes with 0.1).",
    )
    if m.vocab_size is not None:
        _check_positive(m, "model", ("vocab_size",))


def resolve_num_shards(cfg: Any, process_count: int = 1) -> int:
    """data.num_shards, the logical data shards of the training batch (None, or a config
    without the field: the largest of 8, 4, 2, 1 dividing train.batch_size), checked against
    the batch size and the process count (t5x_like/data/sharded_iterator.py)."""
    from t5x_like.data import sharded_iterator

    batch_size = cfg.train.batch_size
    num_shards = cfg.data.get("num_shards", None)
    if num_shards is None:
        num_shards = sharded_iterator.auto_num_shards(batch_size)
    _require(
        isinstance(num_shards, int) and not isinstance(num_shards, bool) and num_shards > 0,
        f"data.num_shards={num_shards!r} must be a positive integer or None (auto).",
    )
    _require(
        batch_size % num_shards == 0,
        f"train.batch_size={batch_size} is not divisible by data.num_shards={num_shards}: each "
        "logical data shard makes train.batch_size / data.num_shards rows per step. Use a batch "
        "size that is a multiple of data.num_shards, or fewer shards.",
    )
    _require(
        num_shards % process_count == 0,
        f"data.num_shards={num_shards} is not divisible by the {process_count} processes: each "
        "process runs data.num_shards / process_count whole shards. Set data.num_shards to a "
        f"multiple of {process_count} (it fixes the data order: resuming a run needs the value "
        "it was saved with).",
    )
    return num_shards


def validate_config(cfg: Any, device_count: int, process_count: int = 1) -> dict[str, int]:
    """Checks `cfg` for this run's devices; returns the resolved mesh shape.

    Raises:
      ConfigError: naming the offending field and the change that fixes it.
    """
    for section in ("model", "data", "train", "optimizer", "mesh", "partitioning"):
        _require(section in cfg, f"The config has no '{section}' section.")
    check_field_types(cfg)
    data, train, opt = cfg.data, cfg.train, cfg.optimizer
    _require(
        data.vocab_path is not None or (isinstance(data.vocab_size, int) and data.vocab_size > 0),
        "Set data.vocab_path to a SentencePiece model or data.vocab_size > 0 to train one.",
    )
    _check_choice(cfg.model.family, "model.family", FAMILIES)
    task = _validate_data(cfg)
    if task.is_encoder_decoder:
        longest = max(task.inputs_len, task.targets_len)
        field = "inputs_len" if longest == task.inputs_len else "targets_len"
        _validate_model(cfg.model, longest, f"data.{field}")
    else:
        _validate_model(cfg.model, task.seq_len, "data.seq_len")
    _check_positive(train, "train", ("steps", "batch_size", "log_every", "checkpoint_every"))
    _check_positive(train, "train", ("max_to_keep",))
    _require(train.eval_every >= 0, "train.eval_every must be >= 0 (0 disables eval).")
    _require(train.eval_batches >= 0, "train.eval_batches must be >= 0.")
    _require(
        0.0 <= train.label_smoothing < 1.0,
        f"train.label_smoothing={train.label_smoothing} must be in [0, 1): the probability mass "
        "spread over the other tokens (0 disables it; 0.1 is common).",
    )
    _require(train.z_loss >= 0.0, "train.z_loss must be >= 0.")
    _require(
        (train.get("loss_chunk_size") or 0) >= 0,
        f"train.loss_chunk_size={train.get('loss_chunk_size')} must be >= 0: positions of each "
        "row per chunk of the fused LM head + loss (0 computes all logits at once).",
    )
    _check_choice(train.get("nan_policy", "stop"), "train.nan_policy", NAN_POLICIES)
    _require(
        isinstance(train.get("allow_config_change", False), bool),
        f"train.allow_config_change={train.get('allow_config_change')!r} must be True or False.",
    )
    decode_batches = train.get("decode_batches", 0)
    _require(
        isinstance(decode_batches, int) and decode_batches >= 0,
        f"train.decode_batches={decode_batches!r} must be an integer >= 0 (0 disables decoding).",
    )
    _require(
        decode_batches == 0 or cfg.model.family == "encoder_decoder",
        "train.decode_batches > 0 (decoded-text metrics) needs model.family='encoder_decoder' "
        "for now; set train.decode_batches=0.",
    )

    _check_choice(opt.name, "optimizer.name", OPTIMIZERS)
    _check_choice(opt.schedule, "optimizer.schedule", SCHEDULES)
    _require(opt.learning_rate > 0, f"optimizer.learning_rate={opt.learning_rate} must be > 0.")
    _require(opt.warmup_steps >= 0, "optimizer.warmup_steps must be >= 0.")
    if opt.schedule == "cosine":
        _require(
            opt.warmup_steps < train.steps,
            f"optimizer.warmup_steps={opt.warmup_steps} must be smaller than train.steps="
            f"{train.steps} for the cosine schedule: lower optimizer.warmup_steps or raise "
            "train.steps.",
        )
    _require(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm must be >= 0 (0 disables).")

    mesh = resolve_mesh_shape(cfg.mesh, device_count)
    num_slices = cfg.mesh.get("num_slices", 1)
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
    microbatches = train.get("microbatches", 1)
    _require(
        isinstance(microbatches, int) and not isinstance(microbatches, bool) and microbatches > 0,
        f"train.microbatches={microbatches!r} must be a positive integer (1: no accumulation).",
    )
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
    resolve_num_shards(cfg, process_count)
    heads = cfg.model.num_heads
    kv_heads = cfg.model.num_kv_heads or heads
    # Imported here: partitioning imports this module (ConfigError, MESH_AXES).
    from t5x_like import partitioning

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
    return mesh


def to_json(cfg: config_dict.ConfigDict) -> str:
    """The resolved config as JSON text, as saved into the workdir."""
    return json.dumps(json.loads(cfg.to_json_best_effort()), indent=2, sort_keys=True)


def save_config(cfg: config_dict.ConfigDict, workdir: str) -> str:
    """Writes `config.json` into the workdir and returns its path."""
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(to_json(cfg) + "\n")
    os.replace(tmp, path)
    return path
