"""Bad configs and inputs, one table: each fails before compiling, naming the field and the fix.

Every case makes one bad input and calls what a run calls with it (validate_config, the real
`--config` flag parsing, build_experiment, the vocabulary and checkpoint loaders); the test
checks the exception type, that the message names the field (or file) and says what to change,
and that JAX compiled nothing meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import tensorflow_datasets as tfds
from absl import flags
from conftest import TEST_VOCAB_SIZE
from etils import epath
from testutil import REPO, tiny_config, tiny_t5_config

from t5x_like import cli
from t5x_like import config as config_lib
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import evaluator, restore, validation
from t5x_like.training import compilation

DECODER_ONLY = str(REPO / "configs" / "decoder_only.py")
SAVED_RUN = str(REPO / "configs" / "saved_run.py")


class TwoSplits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A prepared dataset whose validation split the test empties in its metadata."""

    VERSION = tfds.core.Version("1.0.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({"text": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(4), "validation": self._generate_examples(1)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"text": f"document {i}"}


@dataclasses.dataclass
class Env:
    """Inputs the cases share, made once per module."""

    corpus_dir: str  # The embedded corpus and a TEST_VOCAB_SIZE vocabulary.
    empty_split_dir: str  # Dataset "two_splits" whose validation split has 0 records.
    root: pathlib.Path  # Scratch space for bad files.
    workdir: str  # config.json of a corpus run, and checkpoints/ without any step.
    broken_workdir: str  # config.json, and checkpoints/2/ with nothing saved in it.


@pytest.fixture(scope="module")
def env(corpus_dir, tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad_inputs")
    empty_split_dir = root / "tfds"
    TwoSplits(data_dir=str(empty_split_dir), file_format="array_record").download_and_prepare()
    (info_path,) = empty_split_dir.glob("two_splits/1.0.0/dataset_info.json")
    info = json.loads(info_path.read_text())
    for split in info["splits"]:
        if split["name"] == "validation":
            split["shardLengths"] = []  # Metadata of a split with no records.
    info_path.write_text(json.dumps(info))

    workdirs = []
    for name in ("run", "broken_run"):
        workdir = root / name
        (workdir / "checkpoints").mkdir(parents=True)
        config_lib.save_config(_corpus(corpus_dir), str(workdir))
        workdirs.append(str(workdir))
    (root / "broken_run" / "checkpoints" / "2").mkdir()  # A save that never finished.
    (root / "garbage.model").write_bytes(bytes(range(256)) * 4)
    return Env(corpus_dir, str(empty_split_dir), root, *workdirs)


def _corpus(data_dir: str, **overrides: Any):
    """tiny_config reading the test corpus with its cached vocabulary."""
    cfg = tiny_config(**overrides)
    cfg.data.data_dir = data_dir
    cfg.data.vocab_size = TEST_VOCAB_SIZE
    if "model.vocab_size" not in overrides:
        cfg.model.vocab_size = None
    return cfg


def _as_written(cfg, path: str, value: Any):
    """`cfg` with field `path` set as a config file sets it the first time: ml_collections
    checks an assignment against the field's current type only, so this is not checked."""
    section, name = path.rsplit(".", 1) if "." in path else ("", path)
    target = cfg[section] if section else cfg
    del target[name]
    target[name] = value
    return cfg


def _validate(cfg) -> None:
    validation.validate_config(cfg, device_count=8)


def _build(env: Env, **overrides: Any) -> None:
    experiment.build_experiment(_corpus(env.corpus_dir, **overrides))


def _parse_flags(*args: str, config: str = DECODER_ONLY) -> Any:
    """Parses args as experiments/train.py does; returns the config."""
    holder, _ = cli.define_and_parse(
        ["train.py", *args], config, "", flag_values=flags.FlagValues()
    )
    return holder.value


@dataclasses.dataclass
class Case:
    id: str
    make: Callable[[Env], Any]  # Makes the bad input and hands it to the code under test.
    error: type[Exception]
    patterns: tuple[str, ...]  # Regexes the message matches: the field or file, and the fix.


CASES = [
    # Wrong types: fields a config file writes first, flags, and null fields of config.json.
    Case(
        "int_field_given_a_string_in_a_config_file",
        lambda env: _validate(_as_written(tiny_config(), "model.num_layers", "two")),
        ConfigError,
        (
            r"model.num_layers='two' is a str, but it must be an integer",
            r"override it with --config.model.num_layers=<an integer>",
        ),
    ),
    Case(
        "batch_size_given_a_float_in_a_config_file",
        lambda env: _validate(_as_written(tiny_config(), "train.batch_size", 16.0)),
        ConfigError,
        (r"train.batch_size=16.0 is a float, but it must be an integer", r"fix the config file"),
    ),
    Case(
        "bool_field_given_a_string_in_a_config_file",
        lambda env: _validate(_as_written(tiny_config(), "data.pack", "yes")),
        ConfigError,
        (r"data.pack='yes' is a str, but it must be True or False",),
    ),
    Case(
        "null_field_of_a_saved_run_overridden_with_a_string",
        lambda env: _validate(
            _parse_flags("--config.model.head_dim=two", config=f"{SAVED_RUN}:{env.workdir}")
        ),
        ConfigError,
        (r"model.head_dim='two' is a str, but it must be an integer", r"--config.model.head_dim="),
    ),
    Case(
        "int_flag_given_a_word",
        lambda env: _parse_flags("--config.model.num_layers=two"),
        ConfigError,
        (
            r"--config.model.num_layers=two: invalid literal for int\(\)",
            r"Give a value of the same type as the field's default",
        ),
    ),
    Case(
        "int_flag_given_a_float",
        lambda env: _parse_flags("--config.train.batch_size=8.5"),
        ConfigError,
        (r"--config.train.batch_size=8.5: invalid literal for int\(\)", r"same type"),
    ),
    # Unknown names.
    Case(
        "misspelt_field_flag",
        lambda env: _parse_flags("--config.model.num_layerz=2"),
        ConfigError,
        (
            r"--config.model.num_layerz: the config has no field 'model.num_layerz'",
            r"did you mean --config.model.num_layers\?",
        ),
    ),
    Case(
        "misspelt_section_flag",
        lambda env: _parse_flags("--config.modle.num_layers=2"),
        ConfigError,
        (r"no field 'modle.num_layers'", r"did you mean --config.model.num_layers\?"),
    ),
    Case(
        "misspelt_top_level_field_flag",
        lambda env: _parse_flags("--config.seeed=1"),
        ConfigError,
        (r"no field 'seeed'", r"did you mean --config.seed\?"),
    ),
    Case(
        "unknown_model_family",
        lambda env: _validate(tiny_config(**{"model.family": "moe"})),
        ConfigError,
        (r"model.family='moe' is not supported", r"choose one of \('decoder_only'"),
    ),
    Case(
        "unknown_activation",
        lambda env: _validate(tiny_config(**{"model.activation": "swish"})),
        ConfigError,
        (r"model.activation='swish' is not supported", r"choose one of .*'swiglu'"),
    ),
    Case(
        "unknown_optimizer",
        lambda env: _validate(tiny_config(**{"optimizer.name": "lamb"})),
        ConfigError,
        (r"optimizer.name='lamb' is not supported", r"choose one of \('adamw'"),
    ),
    Case(
        "unknown_dataset",
        lambda env: _build(env, **{"data.dataset": "no_such_dataset"}),
        FileNotFoundError,
        (
            r"Dataset 'no_such_dataset' is not prepared under data_dir=",
            r"prepare it with `tfds build no_such_dataset",
        ),
    ),
    # Sizes that cannot be.
    Case(
        "negative_d_model",
        lambda env: _validate(tiny_config(**{"model.d_model": -1})),
        ConfigError,
        (r"model.d_model=-1 must be a positive integer",),
    ),
    Case(
        "zero_steps",
        lambda env: _validate(tiny_config(**{"train.steps": 0})),
        ConfigError,
        (r"train.steps=0 must be a positive integer",),
    ),
    # Dimensions that do not fit together.
    Case(
        "d_model_not_divisible_by_heads",
        lambda env: _validate(tiny_config(**{"model.d_model": 30})),
        ConfigError,
        (
            r"model.d_model=30 is not divisible by model.num_heads=4",
            r"change one of them or set model.head_dim",
        ),
    ),
    Case(
        "heads_not_a_multiple_of_kv_heads",
        lambda env: _validate(tiny_config(**{"model.num_kv_heads": 3})),
        ConfigError,
        (
            r"model.num_heads=4 is not a multiple of model.num_kv_heads=3",
            r"each KV head must serve the same number",
        ),
    ),
    Case(
        "odd_head_dim_with_rope",
        lambda env: _validate(tiny_config(**{"model.head_dim": 7})),
        ConfigError,
        (r"model.position='rope' needs an even head dim", r"model.head_dim .* is 7: make it even"),
    ),
    Case(
        "seq_len_beyond_learned_positions",
        lambda env: _validate(tiny_config(**{"model.position": "learned", "model.max_len": 8})),
        ConfigError,
        (r"data.seq_len=16 exceeds model.max_len=8", r"raise model.max_len or lower data.seq_len"),
    ),
    # The attention core.
    Case(
        "unknown_attention_impl",
        lambda env: _validate(tiny_config(**{"model.attention_impl": "flash"})),
        ConfigError,
        (r"model.attention_impl='flash' is not supported", r"choose one of \('einsum', 'cudnn'\)"),
    ),
    Case(
        "cudnn_attention_in_float32",
        lambda env: _validate(tiny_config(**{"model.attention_impl": "cudnn"})),
        ConfigError,
        (r"model.attention_impl='cudnn' needs a 16-bit model.dtype", r"model.dtype=bfloat16"),
    ),
    Case(
        "cudnn_attention_with_t5_relative_bias",
        lambda env: _validate(
            tiny_t5_config(**{"model.attention_impl": "cudnn", "model.dtype": "bfloat16"})
        ),
        ConfigError,
        (r"not wired for T5's learned relative position bias", r"attention_impl='einsum'"),
    ),
    Case(
        "cudnn_attention_on_cpu_devices",
        lambda env: experiment.assemble_experiment(
            tiny_config(**{"model.attention_impl": "cudnn", "model.dtype": "bfloat16"})
        ),
        ConfigError,
        (r"runs on NVIDIA GPUs only; this run's devices are cpu", r"attention_impl=einsum"),
    ),
    # Mesh and devices.
    Case(
        "mesh_product_is_not_the_device_count",
        lambda env: _validate(tiny_config(**{"mesh.data": 3})),
        ConfigError,
        (
            r"mesh data=3 x fsdp=1 x tensor=1 = 3 devices, but this run has 8",
            r"Set mesh.data/fsdp/tensor so the product is 8",
        ),
    ),
    Case(
        "two_mesh_axes_are_minus_one",
        lambda env: _validate(tiny_config(**{"mesh.data": -1, "mesh.fsdp": -1})),
        ConfigError,
        (
            r"Only one mesh axis may be -1 .*\['data', 'fsdp'\]",
            r"give every other mesh.data/fsdp/tensor a positive size",
        ),
    ),
    Case(
        "batch_not_divisible_by_data_parallelism",
        lambda env: _validate(tiny_config(**{"train.batch_size": 12})),
        ConfigError,
        (
            r"train.batch_size=12 is not divisible by the data-parallel size mesh.data x mesh.fsdp",
            r"use a multiple of 8",
        ),
    ),
    Case(
        "heads_not_divisible_by_tensor_parallelism",
        lambda env: _validate(tiny_config(**{"mesh.data": 1, "mesh.tensor": 8})),
        ConfigError,
        (
            r"model.num_heads=4 is not divisible by the mesh axes \('tensor',\) \(size 8\)",
            r"change mesh.tensor, model.num_heads",
        ),
    ),
    # Data and vocabulary.
    Case(
        "missing_split",
        lambda env: _build(env, **{"train.eval_every": 5, "data.eval_split": "test"}),
        ConfigError,
        (
            r"no split 'test'; it has \['train', 'validation'\]",
            r"Set data.train_split / data.eval_split",
        ),
    ),
    Case(
        "empty_split",
        lambda env: experiment.build_experiment(
            _corpus(env.empty_split_dir, **{"data.dataset": "two_splits", "train.eval_every": 5})
        ),
        ConfigError,
        (
            r"Split 'validation' of dataset 'two_splits' .* has no records",
            r"Set data.train_split / data.eval_split to a split with records",
        ),
    ),
    Case(
        "missing_vocab_file",
        lambda env: _build(env, **{"data.vocab_path": str(env.root / "nowhere.model")}),
        FileNotFoundError,
        (
            r"SentencePiece model not found: .*nowhere.model",
            r"set data.vocab_path to a SentencePiece .model file",
        ),
    ),
    Case(
        "vocab_path_is_a_directory",
        lambda env: _build(env, **{"data.vocab_path": str(env.root)}),
        FileNotFoundError,
        (r"SentencePiece model path .* is a directory", r"set data.vocab_path"),
    ),
    Case(
        "corrupt_vocab_file",
        lambda env: _build(env, **{"data.vocab_path": str(env.root / "garbage.model")}),
        ValueError,
        (r"Not a valid SentencePiece model: .*garbage.model", r"set data.vocab_path"),
    ),
    Case(
        "vocabulary_larger_than_model_vocab_size",
        lambda env: _build(env, **{"model.vocab_size": 128}),
        ConfigError,
        (
            rf"model.vocab_size=128 is smaller than the vocabulary \({TEST_VOCAB_SIZE} ids\)",
            r"raise model.vocab_size or leave it unset",
        ),
    ),
    # Checkpoints: fine-tuning sources and the workdirs of eval.py / infer.py.
    Case(
        "init_from_does_not_exist",
        lambda env: restore.init_from_dir(str(env.root / "no_pretraining")),
        FileNotFoundError,
        (
            r"train.init_from='.*no_pretraining': no such directory",
            r"point train.init_from at a pretraining workdir",
        ),
    ),
    Case(
        "init_from_without_checkpoints",
        lambda env: restore.init_from_dir(env.workdir),
        FileNotFoundError,
        (
            r"train.init_from='.*run': No checkpoints in .*run/checkpoints yet",
            r"point train.init_from at a pretraining workdir",
        ),
    ),
    Case(
        "init_step_without_checkpoint",
        lambda env: restore.init_from_dir(env.broken_workdir, init_step=5),
        FileNotFoundError,
        (r"train.init_step=5: no such checkpoint", r"set it to one of \[2\], or None"),
    ),
    Case(
        "eval_workdir_does_not_exist",
        lambda env: evaluator.evaluate_checkpoint(
            _corpus(env.corpus_dir), str(env.root / "no_run")
        ),
        FileNotFoundError,
        (r"Workdir .*no_run does not exist", r"pass --workdir=<a training run's workdir>"),
    ),
    Case(
        "eval_workdir_without_checkpoints",
        lambda env: restore.restore_run(_corpus(env.corpus_dir), env.workdir),
        FileNotFoundError,
        (r"No checkpoints in .*run/checkpoints yet", r"point at a run that has saved one"),
    ),
    Case(
        "eval_checkpoint_never_finished",
        lambda env: restore.restore_run(_corpus(env.corpus_dir), env.broken_workdir),
        FileNotFoundError,
        (
            r"Checkpoint .*broken_run/checkpoints/2 has no saved state",
            r"Choose another step of \[2\], or delete",
        ),
    ),
    # Optimisation and regularisation.
    Case(
        "warmup_not_shorter_than_cosine_schedule",
        lambda env: _validate(tiny_config(**{"optimizer.warmup_steps": 10})),
        ConfigError,
        (
            r"optimizer.warmup_steps=10 must be smaller than train.steps=10",
            r"lower optimizer.warmup_steps or raise train.steps",
        ),
    ),
    Case(
        "dropout_rate_of_one",
        lambda env: _validate(tiny_config(**{"model.dropout_rate": 1.0})),
        ConfigError,
        (r"model.dropout_rate=1.0 must be in \[0, 1\)", r"0 disables dropout"),
    ),
    Case(
        "label_smoothing_above_one",
        lambda env: _validate(tiny_config(**{"train.label_smoothing": 1.5})),
        ConfigError,
        (r"train.label_smoothing=1.5 must be in \[0, 1\)", r"0 disables it"),
    ),
    Case(
        "negative_label_smoothing",
        lambda env: _validate(tiny_config(**{"train.label_smoothing": -0.1})),
        ConfigError,
        (r"train.label_smoothing=-0.1 must be in \[0, 1\)",),
    ),
    # Tasks and model families.
    Case(
        "span_corruption_with_too_few_extra_ids",
        lambda env: _validate(
            tiny_t5_config(
                **{
                    "data.task": "span_corruption",
                    "data.inputs_len": 64,
                    "data.targets_len": 20,
                    "data.extra_ids": 2,
                }
            )
        ),
        ConfigError,
        (r"data.extra_ids=2 is too few for span corruption", r"Set data.extra_ids >= \d+"),
    ),
    Case(
        "encoder_decoder_task_with_a_decoder_only_model",
        lambda env: _validate(tiny_t5_config(**{"model.family": "decoder_only"})),
        ConfigError,
        (
            r"data.task='seq2seq' makes encoder-decoder rows but model.family='decoder_only'",
            r"use data.task='causal_lm' or model.family='encoder_decoder'",
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_early_with_a_clear_message(case, env):
    before = compilation.compile_count()
    with pytest.raises(case.error) as info:
        case.make(env)
    message = str(info.value)
    for pattern in case.patterns:
        assert re.search(pattern, message), (pattern, message)
    assert compilation.compile_count() == before, "compiled before failing"


def test_the_table_is_broad():
    """At least 25 distinct bad inputs, each with its own id."""
    assert len(CASES) >= 25 and len({case.id for case in CASES}) == len(CASES)


def test_good_overrides_still_parse():
    """The wrapped flag parsing changes errors only: valid overrides apply as before."""
    cfg = _parse_flags("--config.model.num_layers=3", "--config.optimizer.learning_rate=1e-4")
    assert (cfg.model.num_layers, cfg.optimizer.learning_rate) == (3, 1e-4)
    validation.validate_config(cfg, device_count=8)


def test_scripts_report_a_misspelt_override_in_one_line(env):
    """experiments/train.py and eval.py (a saved run's config) exit 1 without a traceback."""
    commands = {
        "train.py": ["--workdir=" + str(env.root / "new_run"), "--config.model.num_layerz=2"],
        "eval.py": [f"--workdir={env.workdir}", "--config.trian.steps=2"],
    }
    procs = {
        script: subprocess.Popen(
            [sys.executable, str(REPO / "experiments" / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, args in commands.items()
    }
    try:
        results = {
            script: (p.communicate(timeout=120), p.returncode) for script, p in procs.items()
        }
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    (_, train_err), train_rc = results["train.py"]
    assert train_rc == 1 and "Traceback" not in train_err, train_err
    assert "no field 'model.num_layerz' (did you mean --config.model.num_layers?)" in train_err
    assert not (env.root / "new_run").exists()
    (_, eval_err), eval_rc = results["eval.py"]
    assert eval_rc == 1 and "Traceback" not in eval_err, eval_err
    assert "no field 'trian.steps' (did you mean --config.train.steps?)" in eval_err


def test_train_reports_a_config_error_found_after_parsing_in_one_line(env):
    """A value that parses but cannot work (found by validate_config in main) exits 1 with the
    message alone; T5X_LIKE_TRACEBACK=1 brings the traceback back."""
    args = [
        sys.executable,
        str(REPO / "experiments" / "train.py"),
        "--workdir=" + str(env.root / "bad_shards"),
        "--config.data.num_shards=3",
        "--config.train.compilation_cache_dir=",
    ]
    quiet = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr, quiet.stderr
    assert "ERROR (ConfigError): train.batch_size=16 is not divisible by data.num_shards=3" in (
        quiet.stderr
    )
    env_vars = {**os.environ, "T5X_LIKE_TRACEBACK": "1"}
    loud = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env_vars)
    assert loud.returncode == 1 and "Traceback" in loud.stderr
