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
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import tensorflow_datasets as tfds
from absl import flags
from conftest import TEST_VOCAB_SIZE
from etils import epath
from testutil import REPO, tiny_config, tiny_t5_config, tiny_train_args

from t5x_like import cli
from t5x_like import config as config_lib
from t5x_like import workdir as workdir_lib
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


def _config_file(env: Env, name: str, body: str) -> str:
    """A config file `name` in the scratch space whose get_config runs `body`."""
    path = env.root / name
    path.write_text(f"def get_config():\n    {body}\n")
    return str(path)


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
    # Config files that fail on their own.
    Case(
        "config_file_raising_an_error",
        lambda env: _parse_flags(config=_config_file(env, "raises.py", "raise RuntimeError('x')")),
        ConfigError,
        (r"--config=.*raises.py: the config file failed with RuntimeError: x",),
    ),
    Case(
        "config_file_raising_a_value_error",
        lambda env: _parse_flags(config=_config_file(env, "bad_int.py", "return int('two')")),
        ConfigError,
        (r"--config=.*bad_int.py: the config file failed with ValueError: invalid literal",),
    ),
    Case(
        "saved_run_config_of_a_directory_without_config_json",
        lambda env: _parse_flags(config=f"{SAVED_RUN}:{env.root / 'no_run'}"),
        ConfigError,
        (
            r"the config file failed with FileNotFoundError: .*no_run/config.json does not exist",
            r"is not a training workdir",
        ),
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
        (r"holds neither tokenizer.json nor tokenizer.model", r"set data.vocab_path"),
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


# -- Bad inputs to the scripts: each case runs the real script and reads its exit and stderr.

TRAIN, EVAL, INFER = (str(REPO / "experiments" / f"{s}.py") for s in ("train", "eval", "infer"))
SCRIPT_TIMEOUT_S = 300
# At most this many scripts at once (each spends seconds importing JAX on a shared machine).
PARALLEL = 4


@dataclasses.dataclass
class ScriptCase:
    args: list[str]
    stdin: bytes = b""
    address_space_limit: int | None = None  # ulimit -v, in bytes.


def _limit_address_space(limit: int | None) -> Callable[[], None] | None:
    if limit is None:
        return None
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_all(cases: dict[str, ScriptCase]) -> dict[str, subprocess.CompletedProcess]:
    """Runs the cases, PARALLEL at a time; name -> its completed process (text output)."""
    results: dict[str, subprocess.CompletedProcess] = {}
    pending = list(cases.items())
    running: dict[str, subprocess.Popen] = {}
    try:
        while pending or running:
            while pending and len(running) < PARALLEL:
                name, case = pending.pop(0)
                running[name] = subprocess.Popen(
                    [sys.executable, *case.args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=REPO,
                    preexec_fn=_limit_address_space(case.address_space_limit),
                )
                running[name].stdin.write(case.stdin)
                running[name].stdin.close()
                running[name].stdin = None  # Written: communicate() has none to send.
            name = next(iter(running))
            proc = running.pop(name)
            out, err = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
            results[name] = subprocess.CompletedProcess(
                proc.args,
                proc.returncode,
                out.decode(errors="replace"),
                err.decode(errors="replace"),
            )
    finally:
        for proc in running.values():
            proc.kill()
            proc.wait()
    return results


def _saved_run(root: pathlib.Path, name: str, config_json: bytes | None, corpus_dir: str) -> str:
    """A workdir with checkpoints/ and `config_json` (None: a valid corpus run's config)."""
    workdir = root / name
    (workdir / "checkpoints").mkdir(parents=True)
    if config_json is None:
        config_lib.save_config(_corpus(corpus_dir), str(workdir))
    else:
        (workdir / "config.json").write_bytes(config_json)
    return str(workdir)


EMPTY, BINARY = b"", bytes(range(256)) * 4


@pytest.fixture(scope="module")
def scripts(corpus_dir, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every script case below, run once: case name -> the finished process."""
    root = tmp_path_factory.mktemp("script_cases")
    run = lambda name, data=None: _saved_run(root, name, data, corpus_dir)  # noqa: E731
    prompts = run("prompts_run")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "malformed.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    (root / "not_object.jsonl").write_text('{"prompt": "a"}\n\n["b"]\n')
    (root / "a_file").write_text("not a directory\n")

    def train(workdir: Any, **fields: Any) -> list[str]:
        return tiny_train_args(str(workdir), corpus_dir, 50, **fields)

    cases = {
        "empty_config_json_train": ScriptCase(train(run("train_empty", EMPTY))),
        "binary_config_json_train": ScriptCase(train(run("train_binary", BINARY))),
        "empty_config_json_eval": ScriptCase([EVAL, f"--workdir={run('eval_empty', EMPTY)}"]),
        "binary_config_json_eval": ScriptCase([EVAL, f"--workdir={run('eval_bin', BINARY)}"]),
        "empty_config_json_infer": ScriptCase(
            [INFER, f"--workdir={run('infer_empty', EMPTY)}", "--prompt=x"]
        ),
        "binary_config_json_infer": ScriptCase(
            [INFER, f"--workdir={run('infer_bin', BINARY)}", "--prompt=x"]
        ),
        "missing_config_file": ScriptCase(
            [TRAIN, f"--workdir={root / 'w1'}", "--config=configs/no_such_config.py"]
        ),
        "unknown_t5_preset": ScriptCase(
            [TRAIN, f"--workdir={root / 'w2'}", "--config=configs/t5.py:huge"]
        ),
        "unknown_decoder_only_preset": ScriptCase(
            [TRAIN, f"--workdir={root / 'w3'}", "--config=configs/decoder_only.py:huge"]
        ),
        "vocab_size_overflowing_int32": ScriptCase(
            train(root / "w4", **{"model.vocab_size": 3_000_000_000, "data.vocab_size": 256})
        ),
        "vocab_size_beyond_host_memory": ScriptCase(
            train(root / "w5", **{"model.vocab_size": 200_000_000})
        ),
        "vocab_size_beyond_a_memory_cap": ScriptCase(
            train(root / "w6", **{"model.vocab_size": 8_000_000, "model.d_model": 256}),
            address_space_limit=6 * 2**30,
        ),
        "data_vocab_size_larger_than_the_corpus_can_train": ScriptCase(
            train(root / "w7", **{"data.vocab_size": 100_000})
        ),
        "workdir_that_is_a_file": ScriptCase(train(root / "a_file")),
        "prompts_file_with_non_utf8_bytes": ScriptCase(
            [INFER, f"--workdir={prompts}", f"--prompts_file={root / 'latin1.txt'}"]
        ),
        "prompts_jsonl_with_a_malformed_line": ScriptCase(
            [INFER, f"--workdir={prompts}", f"--prompts_file={root / 'malformed.jsonl'}"]
        ),
        "prompts_jsonl_with_a_non_object_line": ScriptCase(
            [INFER, f"--workdir={prompts}", f"--prompts_file={root / 'not_object.jsonl'}"]
        ),
        "beam_length_penalty_nan": ScriptCase(
            [INFER, f"--workdir={prompts}", "--prompt=x", "--strategy=beam", "--length_penalty=nan"]
        ),
    }
    return _run_all(cases)


def _one_line_error(result: subprocess.CompletedProcess, *patterns: str) -> str:
    """The one error line of a failed script, checked to match every pattern."""
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("ERROR", "Error", "FATAL", "error"))
    ]
    assert len(errors) == 1, result.stderr[-3000:]
    for pattern in patterns:
        assert re.search(pattern, errors[0]), (pattern, errors[0])
    return errors[0]


@pytest.mark.parametrize("script", ["train", "eval", "infer"])
def test_empty_config_json(scripts, script):
    _one_line_error(
        scripts[f"empty_config_json_{script}"],
        rf"{script}_empty/config.json is empty",
        r"Restore it from a copy of the run",
    )


@pytest.mark.parametrize("script", ["train", "eval", "infer"])
def test_binary_config_json(scripts, script):
    short = {"train": "train_binary", "eval": "eval_bin", "infer": "infer_bin"}[script]
    _one_line_error(
        scripts[f"binary_config_json_{script}"],
        rf"{short}/config.json is not text \(byte 0x80 at offset 128\)",
        r"saved config is damaged",
    )


def test_missing_config_file(scripts):
    _one_line_error(
        scripts["missing_config_file"],
        r"--config=configs/no_such_config.py: the config file .*/configs/no_such_config.py "
        r"does not exist",
        r"Pass an existing file, e.g. --config=configs/decoder_only.py",
    )


def test_unknown_t5_preset(scripts):
    _one_line_error(
        scripts["unknown_t5_preset"],
        r"--config=configs/t5.py:huge: unknown size 'huge'",
        r"choose one of tiny, small, base",
    )


def test_unknown_decoder_only_preset(scripts):
    _one_line_error(
        scripts["unknown_decoder_only_preset"],
        r"--config=configs/decoder_only.py:huge: unknown decoder-only size 'huge'",
        r"choose one of tiny",
    )


def test_vocab_size_overflowing_int32(scripts):
    _one_line_error(
        scripts["vocab_size_overflowing_int32"],
        r"model.vocab_size=3000000000 does not fit the int32 token ids \(at most 2147483647\)",
        r"lower model.vocab_size",
    )


def test_vocab_size_beyond_host_memory(scripts):
    # 200M x 256 float32 embedding rows (and the tied head) + two Adam moments.
    _one_line_error(
        scripts["vocab_size_beyond_host_memory"],
        r"model.vocab_size=200000000, model.d_model=32, model.num_layers=1: the params "
        r"\(23\.\d GiB\) and optimizer state \(47\.\d GiB\) need at least 71\.\d GiB per host",
        r"this host has [\d.]+ GiB",
        r"Lower model.vocab_size, model.d_model or model.num_layers",
    )


def test_vocab_size_beyond_a_memory_cap(scripts):
    _one_line_error(
        scripts["vocab_size_beyond_a_memory_cap"],
        r"model.vocab_size=8000000, model.d_model=256, .* need at least 22\.\d GiB per host",
        r"this host has 6\.0 GiB \(the address-space limit \(ulimit -v\)\)",
    )


def test_data_vocab_size_larger_than_the_corpus_can_train(scripts):
    _one_line_error(
        scripts["data_vocab_size_larger_than_the_corpus_can_train"],
        r"Cannot train a 100000-piece SentencePiece model on \d+ lines",
        r"data.vocab_size=100000 is more pieces than that text can make; set "
        r"data.vocab_size <= \d+",
    )


def test_workdir_that_is_a_file(scripts):
    _one_line_error(
        scripts["workdir_that_is_a_file"],
        r"--workdir=.*a_file is a file, not a directory: pass a directory",
    )


def test_disk_already_full_at_start(env, monkeypatch):
    """No free byte where the workdir goes: refused before anything is built, with the
    checkpoint's size. (A full filesystem needs root to mount; disk_usage reports one.)"""
    full = shutil.disk_usage("/")._replace(free=0)
    monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda path: full)
    cfg = _corpus(env.corpus_dir)
    params, opt_state = validation.state_bytes(cfg)
    with pytest.raises(workdir_lib.WorkdirError) as info:
        validation.check_before_training(cfg, str(env.root / "new_run"), 8, 1)
    needed = workdir_lib.format_bytes(params + opt_state)
    assert re.search(
        rf"--workdir=.*new_run: its disk has 0.0 B free, less than one checkpoint of this "
        rf"model needs \({re.escape(needed)}, params \+ optimizer state\): free space",
        str(info.value),
    ), str(info.value)
    assert not (env.root / "new_run").exists()


def test_prompts_file_with_non_utf8_bytes(scripts):
    _one_line_error(
        scripts["prompts_file_with_non_utf8_bytes"],
        r"latin1.txt:1: not UTF-8 text \(byte 0xe9 at column 4\): save the prompts as UTF-8",
    )


def test_prompts_jsonl_with_a_malformed_line(scripts):
    _one_line_error(
        scripts["prompts_jsonl_with_a_malformed_line"],
        r"malformed.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 15\)",
        r'one object per line, e.g. \{"prompt": "..."\}',
    )


def test_prompts_jsonl_with_a_non_object_line(scripts):
    _one_line_error(
        scripts["prompts_jsonl_with_a_non_object_line"],
        r"not_object.jsonl:3: an array, not a JSON object",
    )


def test_beam_length_penalty_nan(scripts):
    _one_line_error(
        scripts["beam_length_penalty_nan"],
        r"length_penalty=nan must be a finite number >= 0",
    )
