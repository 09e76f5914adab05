r"""Converts checkpoints: Hugging Face directory <-> workdir, and between layer layouts.

  python experiments/convert_checkpoint.py --from_hf=/models/Qwen2.5-0.5B --workdir=/tmp/qwen
  python experiments/convert_checkpoint.py --workdir=/tmp/run --to_hf=/tmp/run_hf [--step=200]
  python experiments/convert_checkpoint.py --from_workdir=/tmp/run --to_workdir=/tmp/run_scan \
      --scan_layers=True [--step=200] [--fresh_optimizer]

--from_hf reads an HF checkpoint directory (config.json, model.safetensors or its shards, the
tokenizer files) of a family t5x_like.interop converts (GPT-2, LLaMA / Llama 3, Mistral,
Qwen2/2.5, Qwen3, T5), and writes a workdir: config.json (the model section from the HF config,
data.vocab_path pointing at the copied tokenizer in <workdir>/tokenizer), checkpoints/0/ (the
params, a fresh optimizer state) and the tokenizer. The weights stream from the safetensors
shards straight onto all devices, sharded over fsdp (t5x_like/interop/streaming.py): each device
reads its own slice, so the import holds about one param on the host, never the whole model.
`eval.py --workdir`, `infer.py --workdir` and
`train.py --config.train.init_from=<workdir>` use it as they use a training run's (set
data.dataset / data.data_dir with --config.data.* for the text they read). --to_hf writes a
checkpoint of a workdir (default: the latest) as an HF directory that `from_pretrained` loads,
picking the first family whose architecture expresses the model config (or --hf_family), with
the workdir's tokenizer files when it has HF ones.

Restores the params, optimizer state, step, RNG and data-iterator position of one checkpoint
(default: the latest) of --from_workdir, converts every layer stack (t5x_like/layout.py explains
both layouts) and writes them as a checkpoint of the same step into --to_workdir, with the
source's config.json updated to model.scan_layers. Training resumes there with that config
(`experiments/train.py --workdir=<to_workdir> --config=configs/saved_run.py:<to_workdir>`),
on any mesh. The source workdir is only read. Adam's / SGD's state mirrors the params and
converts exactly; Adafactor's factored statistics do not: use --fresh_optimizer (params
converted, optimizer state initialised anew). Runs in one process; arrays pass through host
memory.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags, logging

from t5x_like import checkpointing, layout, partitioning
from t5x_like import config as config_lib
from t5x_like.cli import main_with_clear_errors, parse_flags
from t5x_like.experiment import assembly as experiment
from t5x_like.log_setup import setup_logging

_FROM_HF = flags.DEFINE_string("from_hf", None, "HF checkpoint directory to import (only read).")
_TO_HF = flags.DEFINE_string("to_hf", None, "HF directory to export --workdir's checkpoint to.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The workdir written by --from_hf / read by --to_hf."
)
_HF_FAMILY = flags.DEFINE_string(
    "hf_family", None, "--to_hf: the HF family to write (t5x_like.interop.registry.FAMILIES)."
)
_FROM = flags.DEFINE_string("from_workdir", None, "Training workdir to convert (only read).")
_TO = flags.DEFINE_string("to_workdir", None, "New workdir for the converted checkpoint.")
_SCAN = flags.DEFINE_bool(
    "scan_layers", None, "Target layout: True scanned (layers/...), False unrolled (layers_i/...)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to convert (default: the latest).")
_FRESH = flags.DEFINE_bool(
    "fresh_optimizer", False, "Initialise the optimizer state anew instead of converting it."
)

TOKENIZER_DIR = "tokenizer"  # A converted workdir's copy of the HF tokenizer files.
_SAVED_RUN = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "configs", "saved_run.py"
)


class _IteratorState:
    """Carries the data iterator's saved JSON state from the restore to the save."""

    state: Any = None

    def set_state(self, state: Any) -> None:
        self.state = state

    def get_state(self) -> Any:
        return self.state


def load_workdir_config(workdir: str) -> Any:
    """A workdir's config.json as a ConfigDict (configs/saved_run.py)."""
    spec = importlib.util.spec_from_file_location("t5x_like_saved_run", _SAVED_RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(workdir)


def _check_fits(converted: Any, abstract: Any) -> None:
    """ValueError naming the first leaf whose converted shape differs from the target's."""
    flat_target = dict(
        ("/".join(partitioning.path_names(p)), x.shape)
        for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]
    )
    flat = dict(
        ("/".join(partitioning.path_names(p)), x.shape)
        for p, x in jax.tree_util.tree_flatten_with_path(converted)[0]
    )
    for name, shape in flat_target.items():
        if flat.get(name) != shape:
            raise ValueError(
                f"The converted state's {name} has shape {flat.get(name, 'nothing')}, the "
                f"target layout needs {shape}: this optimizer's state does not mirror the params "
                "(Adafactor's factored statistics). Convert with --fresh_optimizer."
            )


def convert_workdir(
    from_workdir: str,
    to_workdir: str,
    scan_layers: bool,
    step: int | None = None,
    fresh_optimizer: bool = False,
) -> str:
    """Writes checkpoint `step` of `from_workdir` in the `scan_layers` layout into `to_workdir`
    (plus its config.json); returns the new checkpoint's directory.

    Raises:
      FileNotFoundError: `from_workdir` is no training workdir, or has no such step.
      ValueError: `to_workdir` is the source or already holds checkpoints.
    """
    from t5x_like.experiment.restore import checkpoint_dir

    source_dir = checkpoint_dir(from_workdir)
    to_workdir = os.path.abspath(os.path.expanduser(to_workdir))
    if to_workdir == os.path.abspath(os.path.expanduser(from_workdir)):
        raise ValueError("--to_workdir must differ from --from_workdir (the source is only read).")
    target_dir = os.path.join(to_workdir, "checkpoints")
    if os.path.isdir(target_dir) and os.listdir(target_dir):
        raise ValueError(f"{target_dir} already holds checkpoints: choose a new --to_workdir.")

    cfg = load_workdir_config(from_workdir)
    # Restored and re-placed on one device: the conversion happens on the host anyway, and any
    # saved mesh restores onto it. The saved config keeps the run's own mesh.
    one_device = copy.deepcopy(cfg)
    one_device.mesh.update(data=1, fsdp=1, tensor=1)
    devices = jax.devices()[:1]
    source_exp = experiment.assemble_experiment(one_device, devices=devices)
    abstract, _ = experiment.state_shardings(source_exp)
    iterator = _IteratorState()
    reader = checkpointing.Checkpointer(source_dir, read_only=True)
    try:
        step = reader.resolve_step(step)
        state = reader.restore(step, abstract, iterator)
    finally:
        reader.close()

    target_cfg = copy.deepcopy(cfg)
    target_cfg.model.scan_layers = scan_layers
    one_device.model.scan_layers = scan_layers
    target_exp = experiment.assemble_experiment(one_device, devices=devices)
    target_abstract, target_shardings = experiment.state_shardings(target_exp)
    state = jax.device_get(state)
    params = layout.convert_params(state.params, scan_layers)
    if fresh_optimizer:
        init = jax.jit(target_exp.tx.init, out_shardings=target_shardings.opt_state)
        opt_state = init(params)
    else:
        opt_state = layout.convert_tree(state.opt_state, scan_layers)
    converted = state.replace(params=params, opt_state=opt_state)
    _check_fits(converted, target_abstract)
    converted = jax.device_put(converted, target_shardings)

    os.makedirs(to_workdir, exist_ok=True)
    config_lib.save_config(target_cfg, to_workdir)
    writer = checkpointing.Checkpointer(target_dir, async_save=False)
    try:
        writer.save(step, converted, iterator if iterator.state is not None else None)
    finally:
        writer.close()
    return os.path.join(target_dir, str(step))


def _one_device(cfg: Any) -> Any:
    """`cfg` on one device: conversions pass through host memory; the saved config keeps its
    own mesh."""
    one = copy.deepcopy(cfg)
    one.mesh.update(data=1, fsdp=1, tensor=1)
    return one


def _model_family_name(target_module: Any) -> str | None:
    """The t5x_like.models family whose module an interop family's target builds (None: its
    target is built otherwise)."""
    from t5x_like import models

    for name in models.FAMILIES:
        if models.get(name).module_class is target_module:
            return name
    return None


def hf_workdir_config(hf_dir: str, workdir: str, scan_layers: bool = False) -> Any:
    """The experiment config of an HF checkpoint: the model section from its config.json, the
    tokenizer at <workdir>/tokenizer, everything else at its default."""
    from t5x_like.interop import registry

    family = registry.family_for(hf_dir)
    model = family.config_from_hf(hf_dir, scan_layers=scan_layers)
    cfg = config_lib.base_config()
    cfg.name = "hf_" + os.path.basename(os.path.normpath(hf_dir))
    for field in dataclasses.fields(model):
        if field.name not in cfg.model:
            raise ValueError(f"model.{field.name} has no config field: add it to config.SCHEMA.")
        cfg.model[field.name] = getattr(model, field.name)
    extra = registry.workdir_config(hf_dir)  # BERT: its family, head and task.
    model_family = extra.get("model", {}).get("family") or _model_family_name(family.target.module)
    if model_family is None:
        raise ValueError(f"{family.label} checkpoints do not convert to a workdir yet.")
    cfg.model.family = model_family
    cfg.data.vocab_path = os.path.join(workdir, TOKENIZER_DIR)
    cfg.data.extra_ids = 0
    for section, values in extra.items():
        cfg[section].update(values)
    return cfg


def _import_mesh(cfg: Any) -> tuple[Any, list[Any]]:
    """`cfg` and devices for an import: params sharded over fsdp along d_model on as many
    devices as divide it (all of them, for real models), so no device holds the whole model.
    The saved config keeps its own mesh; Orbax restores onto any."""
    fsdp = math.gcd(jax.device_count(), cfg.model.d_model)
    mesh_cfg = copy.deepcopy(cfg)
    mesh_cfg.mesh.update(data=1, fsdp=fsdp, tensor=1, num_slices=1)
    mesh_cfg.partitioning.preset = "fsdp"
    mesh_cfg.train.batch_size = fsdp  # Only shapes are traced; a multiple of the mesh.
    return mesh_cfg, jax.devices()[:fsdp]


def convert_from_hf(hf_dir: str, workdir: str, scan_layers: bool = False) -> str:
    """Writes `workdir` (config.json, checkpoints/0/, tokenizer/) from HF directory `hf_dir`;
    returns the checkpoint's directory.

    Raises:
      FileNotFoundError: no such directory, config.json, weights or tokenizer files.
      ValueError: a family or setting we do not convert (naming it), or a non-empty workdir.
    """
    from t5x_like.data import tokenizers, vocab
    from t5x_like.interop import registry, streaming
    from t5x_like.training.train_state import TrainState

    hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise FileNotFoundError(f"--from_hf={hf_dir} has no config.json: not an HF checkpoint.")
    target_dir = os.path.join(workdir, "checkpoints")
    if os.path.isdir(target_dir) and os.listdir(target_dir):
        raise ValueError(f"{target_dir} already holds checkpoints: choose a new --workdir.")
    cfg = hf_workdir_config(hf_dir, workdir, scan_layers)
    family = registry.family_for(hf_dir)
    model_config = family.config_from_hf(hf_dir, scan_layers=scan_layers)
    plan = streaming.plan_import(family, hf_dir, model_config)  # Headers only: checked first.

    tokenizer_dir = cfg.data.vocab_path
    tokenizers.copy_tokenizer_files(hf_dir, tokenizer_dir)
    tokenizer = vocab.load_tokenizer(tokenizer_dir)  # Fails here, not in eval.py.

    import_cfg, devices = _import_mesh(cfg)
    exp = experiment.assemble_experiment(import_cfg, vocab=tokenizer, devices=devices)
    abstract, shardings = experiment.state_shardings(exp)
    # Streamed from the safetensors shards straight into the param dtype and shardings: each
    # device's shard is read on its own, never the whole model on the host.
    params = plan.place(abstract.params)
    opt_state = jax.jit(exp.tx.init, out_shardings=shardings.opt_state)(params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        rng=jax.random.PRNGKey(cfg.seed),
    )
    config_lib.save_config(cfg, workdir)
    writer = checkpointing.Checkpointer(target_dir, async_save=False)
    try:
        writer.save(0, state)
    finally:
        writer.close()
    return os.path.join(target_dir, "0")


def _export_family(model_config: Any, model_family: str, name: str | None) -> Any:
    """--hf_family's family, or the first of those converting `model_family` (model.family)
    whose architecture expresses `model_config`."""
    from t5x_like.interop import registry

    candidates = {
        key: family
        for key, family in registry.FAMILIES.items()
        if _model_family_name(family.target.module) == model_family
    }
    if name is not None:
        if name not in candidates:
            raise ValueError(
                f"--hf_family={name!r}: a model.family={model_family!r} workdir exports to one "
                f"of {sorted(candidates)}."
            )
        family = candidates[name]
        family.check_layout(model_config)
        return family
    problems = []
    for family in candidates.values():
        try:
            family.check_layout(model_config)
        except ValueError as e:
            problems.append(str(e))
            continue
        return family
    raise ValueError(
        "No HF family expresses this model config: " + " ".join(problems[-2:]) + " Change "
        "those model.* fields (at config time, before training) or pass --hf_family."
    )


def _trained_vocab(cfg: Any) -> Any:
    """The SentencePiece vocabulary a run without data.vocab_path trained and cached (as
    `vocab.load_or_train_vocab` finds it), or None (with a warning) where it is not there."""
    from t5x_like.data import sources, vocab

    data = cfg.data
    cache = vocab.vocab_cache_path(
        sources.resolve_data_dir(data.data_dir),
        data.get("vocab_dataset") or data.dataset,
        data.vocab_size,
        data.train_split,
    )
    if not os.path.isfile(cache):
        logging.warning("No tokenizer files written: the run's vocabulary %s is not there.", cache)
        return None
    return vocab.SentencePieceVocab.load(cache, extra_ids=data.extra_ids)


def convert_to_hf(
    workdir: str, hf_dir: str, step: int | None = None, family_name: str | None = None
) -> str:
    """Writes checkpoint `step` (None: the latest) of `workdir` as an HF directory (config.json,
    model.safetensors, and the tokenizer's files: an imported model's own, or our SentencePiece
    vocabulary's as a T5Tokenizer); returns the family's architecture."""
    from t5x_like.data import tokenizers, vocab
    from t5x_like.experiment.restore import checkpoint_dir, resolve_checkpoint
    from t5x_like.layers.config import TransformerConfig

    source_dir = checkpoint_dir(workdir)
    cfg = load_workdir_config(workdir)
    model_config = TransformerConfig.from_config_dict(cfg.model)
    family = _export_family(model_config, cfg.model.family, family_name)
    tokenizer = None
    vocab_path = cfg.data.vocab_path
    if vocab_path:
        tokenizer = vocab.load_tokenizer(vocab_path, extra_ids=cfg.data.extra_ids)
    else:
        tokenizer = _trained_vocab(cfg)
    one = _one_device(cfg)
    if one.model.vocab_size is None:
        if tokenizer is None:
            raise ValueError("The workdir's config has neither model.vocab_size nor a vocab_path.")
        one.model.vocab_size = -(-tokenizer.vocab_size // 128) * 128
    exp = experiment.assemble_experiment(one, devices=jax.devices()[:1])
    abstract, _ = experiment.state_shardings(exp)
    reader = checkpointing.Checkpointer(source_dir, read_only=True)
    try:
        step = resolve_checkpoint(reader, step)
        params = jax.device_get(reader.restore_params(step, abstract.params))
    finally:
        reader.close()
    model_config = dataclasses.replace(model_config, vocab_size=one.model.vocab_size)
    family.save_hf_checkpoint(params, model_config, hf_dir)
    if tokenizer is not None and vocab_path and os.path.isdir(vocab_path):
        tokenizers.copy_tokenizer_files(vocab_path, hf_dir)
    elif isinstance(tokenizer, vocab.SentencePieceVocab):  # Our own pretraining vocabulary.
        from t5x_like.interop import tokenizer_export

        tokenizer_export.write_sentencepiece_tokenizer(tokenizer, hf_dir)
    if tokenizer is not None:  # The model's own special ids, not our vocabularies' defaults.
        path = os.path.join(hf_dir, "config.json")
        with open(path, encoding="utf-8") as f:
            hf_config = json.load(f)
        hf_config.update(
            bos_token_id=getattr(tokenizer, "bos_id", None),
            eos_token_id=list(getattr(tokenizer, "eos_ids", (tokenizer.eos_id,))),
            pad_token_id=tokenizer.pad_id,
        )
        if len(hf_config["eos_token_id"]) == 1:
            hf_config["eos_token_id"] = hf_config["eos_token_id"][0]
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    return family.architecture


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    hf_mode = _FROM_HF.value is not None or _TO_HF.value is not None
    if hf_mode:
        if (_FROM_HF.value is None) == (_TO_HF.value is None) or _WORKDIR.value is None:
            raise app.UsageError("Pass --workdir with exactly one of --from_hf and --to_hf.")
    elif _FROM.value is None or _TO.value is None or _SCAN.value is None:
        raise app.UsageError(
            "Pass --from_hf=<dir> --workdir=<dir>, --workdir=<dir> --to_hf=<dir>, or "
            "--from_workdir, --to_workdir and --scan_layers=True|False (the target layout)."
        )
    setup_logging()
    try:
        if _FROM_HF.value is not None:
            path = convert_from_hf(_FROM_HF.value, _WORKDIR.value, bool(_SCAN.value))
            message = f"Wrote {path} and {_WORKDIR.value}/config.json."
        elif _TO_HF.value is not None:
            arch = convert_to_hf(_WORKDIR.value, _TO_HF.value, _STEP.value, _HF_FAMILY.value)
            message = f"Wrote {_TO_HF.value} ({arch})."
        else:
            path = convert_workdir(
                _FROM.value, _TO.value, _SCAN.value, step=_STEP.value, fresh_optimizer=_FRESH.value
            )
            message = f"Wrote {path} (model.scan_layers={_SCAN.value})."
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError.
        sys.exit(f"Error: {e}")
    print(message)


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=parse_flags)
