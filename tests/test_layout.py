"""Scanned <-> unscanned layouts: exact conversion of params and Adam state, and a trained
checkpoint converted with experiments/convert_checkpoint.py gives the same logits and resumes."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from testutil import (
    load_script,
    synthetic_batch,
    synthetic_encdec_batch,
    tiny_config,
    tiny_t5_config,
)

from t5x_like import checkpointing, layout, models
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training import optimizers
from t5x_like.training.metrics_writer import read_metrics


def _load_script():
    return load_script("convert_checkpoint")


def _logits(cfg, params, batch):
    return jax.jit(lambda p: models.forward(models.build_model(cfg.model), p, batch))(params)


@pytest.mark.parametrize(
    "make_config,batch",
    [
        (tiny_config, synthetic_batch(2, 16, 128, seed=0)),
        (tiny_t5_config, synthetic_encdec_batch(2, 16, 8, 128, seed=0)),
    ],
    ids=["decoder_only", "encoder_decoder"],
)
def test_converted_params_and_adam_state_are_exact(make_config, batch):
    cfg = make_config(**{"model.num_layers": 3})
    model = models.build_model(cfg.model)
    params = jax.device_get(nn.unbox(models.init_params(model, jax.random.key(0), 1)))
    scanned = layout.convert_params(params, scan_layers=True)
    assert layout.is_scanned(params) is False and layout.is_scanned(scanned) is True
    for stack in ("encoder", "decoder") if "encoder" in params else ("decoder",):
        kernel = scanned[stack]["layers"]["mlp"]["wi_0"]["kernel"]
        assert kernel.shape == (3,) + params[stack]["layers_2"]["mlp"]["wi_0"]["kernel"].shape
        np.testing.assert_array_equal(kernel[2], params[stack]["layers_2"]["mlp"]["wi_0"]["kernel"])
    # The scanned model computes the same logits with the converted params.
    scan_cfg = make_config(**{"model.num_layers": 3, "model.scan_layers": True})
    np.testing.assert_allclose(
        _logits(scan_cfg, scanned, batch), _logits(cfg, params, batch), rtol=1e-6, atol=1e-6
    )
    # Round trip is exact; Adam's state converts like the params it mirrors.
    back = layout.convert_params(scanned, scan_layers=False)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    tx, _ = optimizers.make_optimizer(cfg.optimizer, 10)
    update = jax.jit(tx.update)
    grads = jax.tree.map(lambda p: 1e-3 * np.arange(p.size, dtype=p.dtype).reshape(p.shape), params)
    _, opt_state = update(grads, tx.init(params), params)
    converted = layout.convert_tree(jax.device_get(opt_state), scan_layers=True)
    scanned_grads = layout.convert_params(grads, True)
    expected = jax.device_get(update(scanned_grads, tx.init(scanned), scanned)[1])
    assert jax.tree.structure(converted) == jax.tree.structure(expected)
    # Equal up to the order of the global-norm clipping's sum.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), converted, expected)


def _corpus_config(data_dir, **overrides):
    cfg = tiny_config(**overrides)
    cfg.model.vocab_size = None
    cfg.data.data_dir = data_dir
    cfg.data.vocab_size = 256
    cfg.train.update(steps=4, checkpoint_every=2, eval_every=0, async_checkpoint=False)
    return cfg


def test_trained_checkpoint_converts_gives_same_logits_and_resumes(corpus_dir, tmp_path):
    source, scanned_dir, back_dir = (str(tmp_path / n) for n in ("src", "scan", "back"))
    trainer.train(_corpus_config(corpus_dir), source)
    before = sorted(os.listdir(os.path.join(source, "checkpoints")))
    config_before = open(os.path.join(source, "config.json")).read()

    script = _load_script()
    path = script.convert_workdir(source, scanned_dir, scan_layers=True, step=2)
    assert path == os.path.join(scanned_dir, "checkpoints", "2")
    saved = json.load(open(os.path.join(scanned_dir, "config.json")))
    assert saved["model"]["scan_layers"] is True
    # The source is only read.
    assert sorted(os.listdir(os.path.join(source, "checkpoints"))) == before
    assert open(os.path.join(source, "config.json")).read() == config_before
    with pytest.raises(ValueError, match="already holds checkpoints"):
        script.convert_workdir(source, scanned_dir, scan_layers=True)

    def restored_params(workdir, step):
        cfg = script.load_workdir_config(workdir)
        exp = experiment.assemble_experiment(cfg)
        abstract, _ = experiment.state_shardings(exp)
        reader = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
        try:
            return cfg, reader.restore_params(step, abstract.params)
        finally:
            reader.close()

    batch = synthetic_batch(8, 16, 256, seed=1)
    src_cfg, src_params = restored_params(source, 2)
    scan_cfg, scan_params = restored_params(scanned_dir, 2)
    assert scan_params["decoder"]["layers"]["mlp"]["wo"]["kernel"].shape[0] == 2
    np.testing.assert_allclose(
        _logits(scan_cfg, scan_params, batch),
        _logits(src_cfg, src_params, batch),
        rtol=1e-6,
        atol=1e-6,
    )

    # Converting back gives the source's arrays exactly.
    script.convert_workdir(scanned_dir, back_dir, scan_layers=False)
    _, back_params = restored_params(back_dir, 2)
    back_params, src_params = jax.device_get((back_params, src_params))
    jax.tree.map(np.testing.assert_array_equal, back_params, src_params)

    # Training resumes from the converted checkpoint (optimizer state and data position
    # included): steps 3 and 4 match the unconverted run's.
    resumed_cfg = _corpus_config(corpus_dir, **{"model.scan_layers": True})
    result = trainer.train(resumed_cfg, scanned_dir)
    assert result["start_step"] == 2
    expected, resumed = read_metrics(source, "train"), read_metrics(scanned_dir, "train")
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        np.testing.assert_allclose(resumed[step]["loss"], expected[step]["loss"], rtol=1e-5)
