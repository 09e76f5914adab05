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
SCHEDULES = ("cosine", "rsqrt", "constant")
MESH_AXES = ("data", "fsdp", "tensor")


class ConfigError(ValueError):
    """A config value that cannot work; the message says which field and how to fix it."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(value: Any, field: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{field}={value!r} is not supported; choose one of {choices}.")


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
    _require(len(free) <= 1, f"Only one mesh axis may be -1, got {free}.")
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


def _validate_model(m: Any, seq_len: int, seq_len_field: str) -> None:
    _check_positive(m, "model", ("d_model", "num_layers", "num_heads", "mlp_dim"))
    _check_choice(m.activation, "model.activation", layer_config.ACTIVATIONS)
    _check_choice(m.norm, "model.norm", layer_config.NORMS)
    _check_choice(m.position, "model.position", layer_config.POSITIONS)
    _check_choice(m.dtype, "model.dtype", layer_config.DTYPES)
    _check_choice(m.param_dtype, "model.param_dtype", layer_config.DTYPES)
    _check_choice(m.remat, "model.remat", layer_config.REMAT_POLICIES)
    _check_choice(m.get("norm_position", "pre"), "model.norm_position", layer_config.NORM_POSITIONS)
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
        _require(head_dim % 2 == 0, f"RoPE needs an even head dim, got {head_dim}.")
    if m.position == "learned":
        _require(
            seq_len <= m.max_len,
            f"{seq_len_field}={seq_len} exceeds model.max_len={m.max_len} of the learned "
            f"position table: raise model.max_len or lower {seq_len_field}.",
        )
    _require(0.0 <= m.dropout_rate < 1.0, f"model.dropout_rate={m.dropout_rate} not in [0, 1).")
    if m.vocab_size is not None:
        _check_positive(m, "model", ("vocab_size",))


def validate_config(cfg: Any, device_count: int, process_count: int = 1) -> dict[str, int]:
    """Checks `cfg` for this run's devices; returns the resolved mesh shape.

    Raises:
      ConfigError: naming the offending field and the change that fixes it.
    """
    for section in ("model", "data", "train", "optimizer", "mesh", "partitioning"):
        _require(section in cfg, f"The config has no '{section}' section.")
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
    _require(0.0 <= train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1).")
    _require(train.z_loss >= 0.0, "train.z_loss must be >= 0.")
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
            f"{train.steps} for the cosine schedule.",
        )
    _require(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm must be >= 0 (0 disables).")

    mesh = resolve_mesh_shape(cfg.mesh, device_count)
    batch_shards = mesh["data"] * mesh["fsdp"]
    _require(
        train.batch_size % batch_shards == 0,
        f"train.batch_size={train.batch_size} is not divisible by the data-parallel size "
        f"mesh.data x mesh.fsdp = {batch_shards}: use a multiple of {batch_shards}.",
    )
    _require(
        train.batch_size % process_count == 0,
        f"train.batch_size={train.batch_size} is not divisible by the {process_count} processes.",
    )
    heads = cfg.model.num_heads
    kv_heads = cfg.model.num_kv_heads or heads
    rules = dict(cfg.partitioning.rules)
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
