"""experiments/eval.py and evaluation/evaluator.py: a checkpoint trained on one mesh evaluates
on others (one device, another 8-device mesh) with the same params and the training run's eval
loss; the script end to end with decoded-text metrics; bad input fails before compiling."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from testutil import REPO, load_config, tiny_config, tiny_t5_config

from t5x_like import checkpointing
from t5x_like import config as config_lib
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import evaluator, restore, trainer
from t5x_like.training import compilation
from t5x_like.training.metrics_writer import read_metrics

# One layer, the corpus fixture's vocabulary of 256 pieces, a warmup shorter than 2 steps.
SHORT = {
    "model.num_layers": 1,
    "model.vocab_size": None,
    "data.vocab_size": 256,
    "optimizer.warmup_steps": 1,
}
STEP = 2
EVAL_BATCHES = 2


def _with_mesh(cfg, data, fsdp, tensor):
    cfg.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    return cfg


@pytest.fixture(scope="module")
def decoder_run(corpus_dir, tmp_path_factory):
    """A tiny decoder-only run of 2 steps on a data=2 x fsdp=2 x tensor=2 mesh, evaluated."""
    cfg = tiny_config(
        **SHORT,
        **{
            "train.steps": STEP,
            "train.eval_every": STEP,
            "train.eval_batches": EVAL_BATCHES,
            "train.eval_at_start": False,
            "train.checkpoint_every": STEP,
        },
    )
    cfg.data.data_dir = corpus_dir
    workdir = str(tmp_path_factory.mktemp("decoder_run"))
    trainer.train(_with_mesh(cfg, 2, 2, 2), workdir)
    return workdir


def _restore(cfg, devices, checkpointer):
    """The params of checkpoint STEP restored into the shardings of `cfg`'s mesh on `devices`."""
    exp = experiment.build_experiment(cfg, devices)
    return checkpointer.restore_params(STEP, experiment.state_shardings(exp)[0].params)


# One test for both meshes: under pytest-xdist, tests sharing the run could each train it.
def test_other_meshes_restore_the_same_params_and_loss(decoder_run, tmp_path):
    """On one device (mesh 1 x 1 x 1) and on data=1 x fsdp=4 x tensor=2: the params of the
    2 x 2 x 2 run, and its own eval loss at that step over as many batches."""
    saved = load_config("saved_run", decoder_run)  # The run's config.json: its 2 x 2 x 2 mesh.
    checkpointer = checkpointing.Checkpointer(restore.checkpoint_dir(decoder_run))
    original = _restore(saved, jax.devices(), checkpointer)
    trained = read_metrics(decoder_run, "eval")[STEP]
    for mesh, num_devices in (((1, 1, 1), 1), ((1, 4, 2), 8)):
        devices = jax.devices()[:num_devices]
        cfg = _with_mesh(load_config("saved_run", decoder_run), *mesh)
        params = _restore(cfg, devices, checkpointer)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(original), strict=True):
            assert a.sharding.mesh.devices.size == num_devices
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

        output = str(tmp_path / f"report_{num_devices}.json")
        report = evaluator.evaluate_checkpoint(
            cfg, decoder_run, num_batches=EVAL_BATCHES, devices=devices, output=output
        )
        assert report["metrics"]["loss"] == pytest.approx(trained["loss"], rel=1e-5, abs=1e-5)
        assert report["metrics"]["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)
        assert report["tokens"] == trained["tokens"] > 0
        assert report["step"] == STEP and report["split"] == "validation"
        assert report["batches"] == EVAL_BATCHES and report["examples"] > 0
        assert report["mesh"] == dict(zip(("data", "fsdp", "tensor"), mesh, strict=True))
        assert report["device_count"] == num_devices
        assert report["checkpoint"] == os.path.join(decoder_run, "checkpoints", str(STEP))
        assert json.load(open(output)) == json.loads(json.dumps(report))
    checkpointer.close()


@pytest.fixture(scope="module")
def t5_run(corpus_dir, tmp_path_factory):
    """A tiny T5 (span corruption) workdir as the trainer writes it, made on one device: its
    config.json and a checkpoint of its initial state (decoding needs no trained weights, and
    this skips compiling a train step)."""
    cfg = tiny_t5_config(
        **SHORT,
        **{"data.task": "span_corruption", "data.inputs_len": 32, "data.targets_len": 12},
    )
    cfg.data.data_dir = corpus_dir
    exp = experiment.build_experiment(cfg, jax.devices()[:1])  # mesh.data=-1: 1 x 1 x 1 here.
    workdir = str(tmp_path_factory.mktemp("t5_run"))
    config_lib.save_config(exp.cfg, workdir)  # With model.vocab_size resolved, as in training.
    state = experiment.init_state(exp, experiment.state_shardings(exp)[1])
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    checkpointer.save(STEP, state)
    checkpointer.close()
    return workdir


def _eval_command(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    command = [sys.executable, str(REPO / "experiments" / "eval.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_script_reports_decoded_text_metrics_on_another_mesh(t5_run):
    """One device's checkpoint, evaluated by the script on data=4 x tensor=2."""
    result = _eval_command(
        f"--workdir={t5_run}",
        "--num_batches=1",
        "--decode_batches=1",
        "--config.mesh.data=4",
        "--config.mesh.tensor=2",
        "--config.train.init_step=7",  # A field saved as null still takes an override.
    )
    assert result.returncode == 0, result.stderr[-3000:]
    path = os.path.join(t5_run, "eval", f"step_{STEP}.json")
    report = json.load(open(path))
    metrics = report["metrics"]
    assert metrics["loss"] > 0 and metrics["tokens"] == report["tokens"] > 0
    for key in ("decode_accuracy", "decode_exact_match", "decode_bleu"):
        assert 0.0 <= metrics[key] <= 100.0
    assert metrics["decode_examples"] == 8  # One batch, one example per row.
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2}
    assert report["device_count"] == 8 and report["step"] == STEP and report["batches"] == 1
    assert report["output"] == path and report["workdir"] == t5_run
    decodes = open(report["decodes"]).read().splitlines()
    assert len(decodes) == 8 and set(json.loads(decodes[0])) == {"inputs", "prediction", "target"}
    assert f"report: {path}" in result.stdout and "decode_bleu" in result.stdout


def test_bad_input_fails_before_compiling(t5_run, tmp_path):
    cfg = load_config("saved_run", t5_run)
    before = compilation.compile_count()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluator.evaluate_checkpoint(cfg, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        evaluator.evaluate_checkpoint(cfg, str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no checkpoints/"):
        evaluator.evaluate_checkpoint(cfg, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"No checkpoint for step 3 .*steps: \[2\]"):
        evaluator.evaluate_checkpoint(cfg, t5_run, step=3)
    with pytest.raises(ConfigError, match=r"no split 'test'; it has \['train', 'validation'\]"):
        evaluator.evaluate_checkpoint(cfg, t5_run, split="test")
    with pytest.raises(ConfigError, match=r"this run has 8"):
        evaluator.evaluate_checkpoint(_with_mesh(cfg, 3, 1, 1), t5_run)
    with pytest.raises(ConfigError, match=r"decode_batches=1: .*encoder_decoder"):
        evaluator.eval_config(tiny_config(), decode_batches=1)  # A decoder-only model.
    assert compilation.compile_count() == before

    result = _eval_command(f"--workdir={tmp_path / 'nowhere'}", "--config.mesh.data=1")
    assert result.returncode != 0 and "nowhere does not exist" in result.stderr
