"""An experiment built from its config: mesh, data, vocabulary, model, optimizer, shardings.

Nothing here compiles before the config, the mesh, the data and the vocabulary have been checked;
state shardings come from abstract shapes, and the state is initialised directly sharded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import logging
from ml_collections import config_dict

from t5x_like import checkpointing, models, partitioning
from t5x_like import config as config_lib
from t5x_like.errors import ConfigError
from t5x_like.experiment import validation
from t5x_like.layers.config import TransformerConfig
from t5x_like.training import losses, optimizers, steps
from t5x_like.training.train_state import TrainState


@dataclasses.dataclass
class Experiment:
    """Everything built from the config before any state exists."""

    cfg: config_dict.ConfigDict
    mesh: jax.sharding.Mesh
    rules: partitioning.Rules
    splits: dict[str, Any]
    vocab: Any  # t5x_like.data.vocab.SentencePieceVocab
    task: Any  # t5x_like.data.tasks.Task: the preprocessing and row lengths.
    family: models.ModelFamily  # What the code asks about the model (models/base.py).
    model: nn.Module
    model_config: TransformerConfig
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    batch_sharding: jax.sharding.NamedSharding


def _resolve_vocab_size(cfg: config_dict.ConfigDict, vocab_size: int) -> None:
    """Fills model.vocab_size (rounded up to 128 for sharding) or checks the given one."""
    with cfg.unlocked():
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = int(math.ceil(vocab_size / 128) * 128)
        elif cfg.model.vocab_size < vocab_size:
            raise ConfigError(
                f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary "
                f"({vocab_size} ids): raise model.vocab_size or leave it unset (None)."
            )


def _resolve_num_labels(cfg: config_dict.ConfigDict, labels: tuple[str, ...]) -> None:
    """Sets model.num_labels to the size of the fine-tuning label set (when the config leaves
    the schema's default) or checks that it equals it; QA (no label set) changes nothing."""
    if not labels or cfg.model.num_labels == len(labels):
        return
    default = next(f.default for f in config_lib.SCHEMA["model"] if f.name == "num_labels")
    if cfg.model.num_labels != default:
        raise ConfigError(
            f"model.num_labels={cfg.model.num_labels} but the data has {len(labels)} labels "
            f"{list(labels)}: set model.num_labels={len(labels)} (or leave it unset)."
        )
    with cfg.unlocked():
        cfg.model.num_labels = len(labels)
    logging.info("model.num_labels=%d from the label set %s.", len(labels), list(labels))


def build_experiment(
    cfg: config_dict.ConfigDict,
    devices: list[jax.Device] | None = None,
    *,
    splits_needed: tuple[str, ...] | None = None,
) -> Experiment:
    """Validates the config, then loads data sources and the vocabulary and assembles the rest.

    `devices`: the run's devices (default: all). `splits_needed`: splits the dataset must have
    (default: the train split, and the eval split when train.eval_every > 0).
    """
    # Imported here: TFDS is only needed once there is data to read.
    from t5x_like.data import finetune, sources, tasks
    from t5x_like.data import vocab as vocab_lib

    devices = list(jax.devices() if devices is None else devices)
    mesh_shape = validation.validate_config(cfg, len(devices), jax.process_count())
    data = cfg.data
    if splits_needed is None:
        splits_needed = (data.train_split,) + ((data.eval_split,) if cfg.train.eval_every else ())
    if data.task in finetune.TASK_KINDS:
        # Labelled examples (a built-in task, the user's files or TFDS), one label set.
        splits = finetune.prepare_splits(data, splits_needed)
        _resolve_num_labels(cfg, splits.labels)
    else:
        fields = tasks.Task.from_config(data).record_fields  # Checked in the user's files.
        splits = sources.prepare_dataset(
            data.dataset, data.data_dir, sample_by=data.text_sample_by, fields=fields
        )
    for split in splits_needed:
        if split not in splits:
            raise ConfigError(
                f"Dataset {data.dataset!r} has no split {split!r}; it has {sorted(splits)}. "
                "Set data.train_split / data.eval_split (a slice such as 'train[95%:]' holds out "
                "part of a split)."
            )
        if splits.num_examples(split) == 0:  # Else it would fail at its first batch.
            raise ConfigError(
                f"Split {split!r} of dataset {data.dataset!r} (data_dir={splits.data_dir!r}) has "
                "no records. Set data.train_split / data.eval_split to a split with records, or "
                "re-prepare the dataset."
            )
    # Fine-tuning reuses the pretraining vocabulary: trained on data.vocab_dataset when set.
    vocab_dataset = data.vocab_dataset or data.dataset
    vocab = vocab_lib.load_or_train_vocab(
        data.vocab_path,
        data_dir=data.data_dir,
        dataset_name=vocab_dataset,
        split=data.train_split,
        vocab_size=data.vocab_size,
        extra_ids=data.extra_ids,
        text_key=data.text_key,
    )
    return assemble_experiment(
        cfg, splits=splits, vocab=vocab, devices=devices, mesh_shape=mesh_shape
    )


def assemble_experiment(
    cfg: config_dict.ConfigDict,
    *,
    splits: dict[str, Any] | None = None,
    vocab: Any = None,
    devices: list[jax.Device] | None = None,
    mesh_shape: dict[str, int] | None = None,
) -> Experiment:
    """Mesh, model and optimizer for `cfg` on `devices` (default: all), given data and vocab.

    Without a vocabulary, model.vocab_size must be set in the config (tests use this).
    `mesh_shape`: what `validate_config` returned for `cfg` and `devices` (None: validate here;
    a config is validated once per build).
    """
    from t5x_like.data import tasks

    devices = list(jax.devices() if devices is None else devices)
    if mesh_shape is None:
        mesh_shape = validation.validate_config(cfg, len(devices), jax.process_count())
    if cfg.model.attention_impl == "cudnn" and devices[0].platform != "gpu":
        raise ConfigError(
            f"model.attention_impl='cudnn' runs on NVIDIA GPUs only; this run's devices are "
            f"{devices[0].platform} devices: use --config.model.attention_impl=einsum."
        )
    rules = partitioning.rules_for_config(cfg.partitioning, mesh_shape)
    mesh = partitioning.make_mesh(mesh_shape, devices, cfg.mesh.num_slices)
    if vocab is not None:
        _resolve_vocab_size(cfg, vocab.vocab_size)
    elif cfg.model.vocab_size is None:
        raise ConfigError("model.vocab_size must be set when no vocabulary is given.")
    family = models.get(cfg.model.family)
    model = family.build(cfg.model)
    tx, schedule = optimizers.make_optimizer(cfg.optimizer, cfg.train.steps, cfg.train.nan_policy)
    return Experiment(
        cfg=cfg,
        mesh=mesh,
        rules=rules,
        splits=splits or {},
        vocab=vocab,
        task=tasks.Task.from_config(cfg.data),
        family=family,
        model=model,
        model_config=model.config,
        tx=tx,
        schedule=schedule,
        batch_sharding=partitioning.batch_sharding(mesh, rules),
    )


def _init_boxed_params(exp: Experiment, rng: jax.Array) -> Any:
    # A [batch, 1] dummy input: enough to create every parameter, cheap to trace.
    with nn.logical_axis_rules(exp.rules):
        return exp.family.init_params(exp.model, rng, exp.cfg.train.batch_size)


def state_shardings(exp: Experiment) -> tuple[TrainState, TrainState]:
    """(abstract state, its shardings), from shapes alone: nothing is allocated or compiled."""
    rng = jax.random.PRNGKey(exp.cfg.seed)
    boxed = jax.eval_shape(lambda r: _init_boxed_params(exp, r), rng)
    param_shardings = partitioning.params_shardings(boxed, exp.mesh, exp.rules)
    abstract_params = nn.unbox(boxed)
    partitioning.check_divisible(abstract_params, param_shardings)
    abstract_opt = jax.eval_shape(exp.tx.init, abstract_params)
    opt_shardings = partitioning.opt_state_shardings(
        abstract_opt, abstract_params, param_shardings, exp.mesh
    )
    rep = partitioning.replicated(exp.mesh)
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=abstract_params,
        opt_state=abstract_opt,
        rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype),
    )
    shardings = TrainState(step=rep, params=param_shardings, opt_state=opt_shardings, rng=rep)
    return checkpointing.abstract_like(abstract, shardings), shardings


def init_state(exp: Experiment, shardings: TrainState) -> TrainState:
    """Initialises the state directly into its shardings (no full copy on one device)."""
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(exp.cfg.seed))

    def init(rng: jax.Array) -> TrainState:
        params = nn.unbox(_init_boxed_params(exp, rng))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=exp.tx.init(params),
            rng=dropout_rng,
        )

    # No mesh context here: flax would constrain DenseGeneral kernels while they are still
    # flattened to 2-D inside their initialiser; out_shardings place the result instead.
    return jax.jit(init, out_shardings=shardings)(init_rng)


def _pipeline_args(exp: Experiment) -> dict[str, Any]:
    """Arguments of the eval pipelines: this process's slice of the global batch, read from
    every process_count-th record (eval metrics are sums, so the split need not be fixed)."""
    cfg = exp.cfg
    return dict(
        task=exp.task,
        batch_size=cfg.train.batch_size // jax.process_count(),
        pack=cfg.data.pack,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def make_train_iterator(exp: Experiment) -> Any:
    """This process's rows of the training batches: the logical data shards (data.num_shards)
    covering the rows its devices hold, so the global batches are the same for any process
    count (t5x_like/data/sharded_iterator.py)."""
    from t5x_like.data import sharded_iterator

    cfg = exp.cfg
    batch_size = cfg.train.batch_size
    return sharded_iterator.make_sharded_train_iterator(
        exp.splits[cfg.data.train_split],
        exp.vocab,
        batch_size=batch_size,
        num_shards=sharded_iterator.resolve_num_shards(cfg, jax.process_count()),
        seed=cfg.seed,
        rows=sharded_iterator.process_rows(exp.batch_sharding, batch_size),
        task=exp.task,
        pack=cfg.data.pack,
    )


def make_eval_iterator(exp: Experiment, *, for_decoding: bool = False) -> Any:
    """The eval split's batches; `for_decoding`: one example per row, train.decode_batches."""
    from t5x_like.data import pipeline

    split = exp.splits[exp.cfg.data.eval_split]
    args = _pipeline_args(exp)
    if for_decoding:
        args["pack"] = False
        num_batches = exp.cfg.train.decode_batches
    else:
        num_batches = exp.cfg.train.eval_batches or None
    return pipeline.make_eval_iterator(split, exp.vocab, num_batches=num_batches, **args)


@dataclasses.dataclass(frozen=True)
class Step:
    """A step function jitted once, its static `steps.LossConfig` bound: called (and lowered)
    with the arrays only."""

    jitted: Any
    loss_cfg: steps.LossConfig

    def __call__(self, *arrays: Any) -> Any:
        return self.jitted(*arrays, self.loss_cfg)

    def lower(self, *arrays: Any) -> Any:
        return self.jitted.lower(*arrays, self.loss_cfg)


def loss_config(exp: Experiment) -> steps.LossConfig:
    """The step functions' static settings for this experiment."""
    train_cfg = exp.cfg.train
    return steps.LossConfig(
        module=exp.model,
        tx=exp.tx,
        rules=exp.rules,
        z_loss=train_cfg.z_loss,
        label_smoothing=train_cfg.label_smoothing,
        microbatches=train_cfg.microbatches,
        loss_chunk_size=train_cfg.loss_chunk_size,
    )


def jit_steps(exp: Experiment, shardings: TrainState) -> tuple[Step, Step]:
    """The train step (state donated) and the eval step, jitted with explicit shardings."""
    loss_cfg = loss_config(exp)
    batch = exp.batch_sharding
    rep = partitioning.replicated(exp.mesh)
    jit_train = jax.jit(
        steps.train_step,
        static_argnums=2,
        in_shardings=(shardings, batch),
        out_shardings=(shardings, rep),
        donate_argnums=0,
    )
    jit_eval = jax.jit(
        steps.eval_step,
        static_argnums=2,
        in_shardings=(shardings.params, batch),
        out_shardings=rep,
    )
    return Step(jit_train, loss_cfg), Step(jit_eval, loss_cfg)


def evaluate(exp: Experiment, eval_step: Any, params: Any) -> dict[str, float]:
    """Loss, perplexity and token accuracy of `params` on the eval split."""
    totals: dict[str, float] = {}
    for local_batch in make_eval_iterator(exp):
        sums = eval_step(params, partitioning.global_batch(local_batch, exp.batch_sharding))
        for k, v in jax.device_get(sums).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return losses.summarize(totals) if totals else {}
