"""Encoder-only fine-tuning end to end on the built-in tasks: a tiny MLM pretraining run, then
classification from its encoder (`train.init_from`, new head) whose eval metrics equal
scikit-learn's on the same predictions; the model-field refusal; text predictions per task."""

import json
import os

import jax
import numpy as np
import pytest
from sklearn import metrics as sk
from testutil import load_config

from t5x_like import checkpointing, decoding, partitioning
from t5x_like import workdir as workdir_lib
from t5x_like.data import featurize, finetune
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly, evaluator, inference, restore, trainer
from t5x_like.training.metrics_writer import read_metrics

TINY = {"d_model": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64, "max_len": 64}


def _shrink(cfg, data_dir, steps, **train):
    cfg.model.update(vocab_size=None, **TINY)
    cfg.data.update(data_dir=data_dir, vocab_size=256, seq_len=32)
    cfg.train.update(steps=steps, batch_size=8, log_every=steps, checkpoint_every=steps, **train)
    cfg.train.compilation_cache_dir = ""
    cfg.optimizer.warmup_steps = 1
    return cfg


def _finetune_config(data_dir, init_from, task="docstring_kind", **model):
    cfg = _shrink(load_config("encoder_only_finetune", task), data_dir, 6, eval_every=6)
    cfg.data.max_query_len = 12
    cfg.data.doc_stride = 8
    cfg.train.init_from = init_from
    cfg.model.update(model)
    return cfg


@pytest.fixture(scope="module")
def pretrained(corpus_dir, tmp_path_factory):
    """A 4-step MLM pretraining workdir of the tiny BERT."""
    workdir = str(tmp_path_factory.mktemp("bert"))
    cfg = _shrink(load_config("encoder_only"), corpus_dir, 4, eval_every=0)
    trainer.train(cfg, workdir)
    return workdir


def _params(cfg, workdir):
    """'/'-joined name -> array of `workdir`'s latest params under `cfg`'s model."""
    exp = assembly.build_experiment(cfg, splits_needed=(cfg.data.train_split,))
    abstract, _ = assembly.state_shardings(exp)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        params = ckpt.restore_params(None, abstract.params)
    finally:
        ckpt.close()
    return _flat(params)


def _flat(params):
    return {
        "/".join(partitioning.path_names(p)): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def test_init_from_loads_the_encoder_and_starts_a_fresh_head(corpus_dir, pretrained, tmp_path):
    cfg = _finetune_config(corpus_dir, pretrained)
    exp = assembly.build_experiment(cfg)
    assert exp.cfg.model.num_labels == len(exp.splits.labels) == 5  # From the label set.
    source = _params(_shrink(load_config("encoder_only"), corpus_dir, 4), pretrained)
    fresh = checkpointing.Checkpointer(str(tmp_path / "empty"))
    state, _ = trainer._restore_or_init(exp, fresh, assembly.make_train_iterator(exp))
    init = _flat(assembly.init_state(exp, assembly.state_shardings(exp)[1]).params)
    loaded = _flat(state.params)
    shared = sorted(set(loaded) & set(source))
    assert any(n.startswith("encoder/") for n in shared) and "embedding" in shared
    for name in shared:
        np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)
    new = sorted(set(loaded) - set(source))
    assert new and all(n.startswith(("pooler/", "classifier/")) for n in new)
    for name in new:  # The head is the fresh init, not something loaded.
        np.testing.assert_array_equal(loaded[name], init[name], err_msg=name)


def _reference_predictions(cfg, workdir):
    """Predicted and true label ids of the validation split, computed here without the
    pipeline or task_eval: rows from featurize, the restored module applied directly."""
    run = restore.restore_run(cfg, workdir, splits_needed=("validation",))
    exp = run.exp
    data = finetune.load_split(cfg.data, "validation", exp.splits.labels)
    special = featurize.SpecialIds.from_vocab(exp.vocab)
    rows = [
        featurize.classification_row(e, exp.vocab.encode, special, cfg.data.seq_len, None)
        for e in data.encoded()
    ]
    batch = {k: np.stack([r[k] for r in rows]) for k in featurize.BASE_KEYS}
    params = jax.device_get(run.params)
    out = exp.model.apply(
        {"params": params},
        batch["inputs"],
        token_type_ids=batch["token_type_ids"],
        segment_ids=batch["segment_ids"],
        positions=batch["positions"],
    )
    return np.asarray(out["logits"]).argmax(-1), np.array([r["label"][0] for r in rows])


def test_finetuned_classification_metrics_equal_sklearn_on_its_predictions(
    corpus_dir, pretrained, tmp_path
):
    cfg = _finetune_config(corpus_dir, pretrained)
    workdir = str(tmp_path / "cls")
    trainer.train(cfg, workdir)
    evals = read_metrics(workdir, "eval")
    assert sorted(evals) == [0, 6]
    got = evals[6]
    preds, labels = _reference_predictions(cfg, workdir)
    assert len(labels) == 123  # Every validation example, padding rows left out.
    assert got["task_accuracy"] == pytest.approx(sk.accuracy_score(labels, preds))
    assert got["task_f1_macro"] == pytest.approx(sk.f1_score(labels, preds, average="macro"))
    assert got["task_mcc"] == pytest.approx(sk.matthews_corrcoef(labels, preds))
    assert "task_f1_binary" not in got  # Five labels: no positive class.
    # eval.py's path reports the same numbers in its JSON report.
    report = evaluator.evaluate_checkpoint(cfg, workdir)
    on_disk = json.load(open(report["output"]))["metrics"]
    for key in ("task_accuracy", "task_f1_macro", "task_mcc", "task_recall_macro"):
        assert on_disk[key] == pytest.approx(got[key])


def test_init_from_refuses_a_model_that_computes_another_function(corpus_dir, pretrained, tmp_path):
    cfg = _finetune_config(corpus_dir, pretrained, activation="relu", norm_position="pre")
    line = (
        r"train.init_from=.* was trained with other model settings \(model.activation: saved "
        r"'gelu_exact', now 'relu'; model.norm_position: saved 'post', now 'pre'\)"
    )
    with pytest.raises(workdir_lib.ConfigChangeError, match=line):
        trainer.train(cfg, str(tmp_path / "a"))
    assert not os.path.exists(tmp_path / "a")  # Refused before anything was written.
    with cfg.unlocked():
        cfg.train.allow_config_change = True
    workdir_lib.check_init_from_config(cfg, pretrained)  # A warning, not an error.
    wider = _finetune_config(corpus_dir, pretrained, mlp_dim=96)
    with pytest.raises(ConfigError, match=r"do not fit this model \(encoder/.*saved \(32, 64\)"):
        trainer.train(wider, str(tmp_path / "b"))


def _run(cfg):
    """A RestoredRun of `cfg`'s freshly initialised model (inference needs no training)."""
    exp = assembly.build_experiment(cfg, splits_needed=(cfg.data.train_split,))
    shardings = assembly.state_shardings(exp)[1]
    params = assembly.init_state(exp, shardings).params
    return restore.RestoredRun(exp, params, shardings.params, 0, "", "")


def test_each_infer_mode_returns_well_formed_output(corpus_dir, pretrained):
    config = decoding.DecodeConfig()
    mlm_cfg = _shrink(load_config("encoder_only"), corpus_dir, 4)
    mlm = restore.restore_run(mlm_cfg, pretrained)
    (filled,) = inference.generate_text(mlm, ["Return the [MASK] of x and [MASK]."], config)
    assert len(filled["fills"]) == 2 and "[MASK]" not in filled["output"]

    cls = _run(_finetune_config(corpus_dir, None))
    out = inference.generate_text(cls, ["Return the absolute value.", "a\tb"], config)
    assert [o["output"] in cls.exp.splits.labels for o in out] == [True, True]
    assert all(0 < o["score"] <= 1 for o in out)

    tags = _run(_finetune_config(corpus_dir, None, "code_tags"))
    (tagged,) = inference.generate_text(tags, ["Call os.path.join() with None"], config)
    words = ["Call", "os.path.join()", "with", "None"]
    assert len(tagged["tags"]) == 4 and set(tagged["tags"]) <= set(tags.exp.splits.labels)
    assert [w.rsplit("/", 1)[0] for w in tagged["output"].split()] == words

    qa = _run(_finetune_config(corpus_dir, None, "module_qa"))
    context = "In json, a function: Serialize obj to a JSON formatted str. In os, a module: Misc."
    prompt = json.dumps({"question": "What does the function in json do?", "context": context})
    (answer,) = inference.generate_text(qa, [prompt], config)
    assert answer["output"] in context and isinstance(answer["score"], float)
    with pytest.raises(ValueError, match=r"^Prompt 1: a question-answering model takes a JSON"):
        inference.generate_text(qa, ["not json"], config)


def test_unknown_task_is_one_line_listing_the_choices():
    with pytest.raises(ConfigError, match=r"unknown task 'nope'; choose one of docstring_kind, "):
        load_config("encoder_only_finetune", "nope")


def test_a_num_labels_that_disagrees_with_the_label_set_is_one_line(corpus_dir):
    cfg = _finetune_config(corpus_dir, None, num_labels=3)
    with pytest.raises(ConfigError, match=r"^model.num_labels=3 but the data has 5 labels "):
        assembly.build_experiment(cfg)
