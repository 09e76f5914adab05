"""T5 end to end on the embedded data: span-corruption pretraining, then fine-tuning from its
params (not its optimizer) with decoded-text metrics; bad init_from paths and shapes fail."""

import json
import os

import jax
import numpy as np
import pytest
from testutil import load_config, tiny_t5_config

from t5x_like import checkpointing
from t5x_like.data import docstrings
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training.metrics_writer import read_metrics

SMALL_MODEL = {"model.vocab_size": None, "data.vocab_size": 256}


def _pretrain_config(data_dir, **overrides):
    cfg = tiny_t5_config(
        **{
            "data.task": "span_corruption",
            "data.inputs_len": 32,
            "data.targets_len": 12,
            "train.steps": 4,
            "train.checkpoint_every": 4,
            **SMALL_MODEL,
            **overrides,
        }
    )
    cfg.data.data_dir = data_dir
    return cfg


def _finetune_config(data_dir, init_from, **overrides):
    cfg = load_config("t5_finetune")  # summarize: body -> summary on t5x_like_docstrings.
    tiny = tiny_t5_config()
    cfg.model.update(dict(tiny.model))
    cfg.train.update(dict(tiny.train))
    cfg.data.update(data_dir=data_dir, inputs_len=32, targets_len=8)
    cfg.train.update(steps=2, eval_every=2, eval_batches=1, decode_batches=1, init_from=init_from)
    for path, value in {**SMALL_MODEL, **overrides}.items():
        section, field = path.split(".")
        cfg[section][field] = value
    return cfg


def _tree_snapshot(directory):
    """(path, size, mtime) of every file under `directory`."""
    return sorted(
        (
            os.path.join(root, name),
            os.stat(os.path.join(root, name)).st_size,
            os.stat(os.path.join(root, name)).st_mtime_ns,
        )
        for root, _, names in os.walk(directory)
        for name in names
    )


@pytest.fixture(scope="module")
def pretrained(corpus_dir, tmp_path_factory):
    """A 4-step span-corruption run on the corpus; returns its workdir."""
    docstrings.build(corpus_dir)
    workdir = str(tmp_path_factory.mktemp("t5_pretrain"))
    result = trainer.train(_pretrain_config(corpus_dir), workdir)
    assert result["train"]["loss"] > 0
    return workdir


def test_span_corruption_pretraining_writes_outputs(pretrained):
    saved = json.load(open(os.path.join(pretrained, "config.json")))
    assert saved["model"]["family"] == "encoder_decoder"
    # 256 pieces + 100 sentinels, rounded up to a multiple of 128.
    assert saved["model"]["vocab_size"] == 384
    assert os.listdir(os.path.join(pretrained, "checkpoints")) == ["4"]
    train = read_metrics(pretrained, "train")
    assert sorted(train) == [1, 2, 3, 4]
    assert train[4]["tokens_per_sec"] > 0 and train[4]["mfu"] > 0


def test_finetuning_starts_from_pretrained_params_and_decodes(corpus_dir, pretrained, tmp_path):
    cfg = _finetune_config(corpus_dir, pretrained)
    exp = experiment.build_experiment(cfg)
    abstract, _ = experiment.state_shardings(exp)
    pretrained_params = checkpointing.Checkpointer(
        os.path.join(pretrained, "checkpoints")
    ).restore_params(4, abstract.params)
    fresh = checkpointing.Checkpointer(str(tmp_path / "empty"))
    state, _ = trainer._restore_or_init(exp, fresh, experiment.make_train_iterator(exp))
    leaves = zip(jax.tree.leaves(state.params), jax.tree.leaves(pretrained_params), strict=True)
    for a, b in leaves:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Fresh optimizer: Adam's moments are zero, its count 0.
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state.opt_state))

    before = _tree_snapshot(pretrained)
    workdir = str(tmp_path / "finetune")
    result = trainer.train(cfg, workdir)
    assert _tree_snapshot(pretrained) == before  # The pretraining run is only read.
    evals = read_metrics(workdir, "eval")
    assert sorted(evals) == [0, 2]
    for key in ("decode_accuracy", "decode_exact_match", "decode_bleu"):
        assert 0.0 <= evals[2][key] <= 100.0
    assert evals[2]["decode_examples"] == 8  # One batch, one example per row.
    assert result["eval"]["loss"] == pytest.approx(evals[2]["loss"])
    lines = open(os.path.join(workdir, "decodes", "step_2.jsonl")).read().splitlines()
    examples = [json.loads(line) for line in lines]
    assert len(examples) == 8
    assert all(e["inputs"].startswith("summarize: ") and e["target"] for e in examples)


def test_init_from_errors_name_the_field(corpus_dir, pretrained, tmp_path):
    missing = _finetune_config(corpus_dir, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"train.init_from=.*nowhere"):
        trainer.train(missing, str(tmp_path / "a"))
    wider = _finetune_config(corpus_dir, pretrained, **{"model.mlp_dim": 96})
    # Found from the checkpoint's metadata, naming the param and both shapes.
    mismatch = r"do not fit this model \(.*mlp/wi_0/kernel: saved \(32, 64\), model \(32, 96\)"
    with pytest.raises(ConfigError, match=mismatch):
        trainer.train(wider, str(tmp_path / "b"))
    wrong_step = _finetune_config(corpus_dir, pretrained, **{"train.init_step": 3})
    with pytest.raises(FileNotFoundError, match=r"init_step=3: no such checkpoint.*\[4\]"):
        trainer.train(wrong_step, str(tmp_path / "c"))
