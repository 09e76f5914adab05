"""The config schema: every field declared once, and the command line reading it.

Unit tests of the schema and the override pre-check, then the scripts run as subprocesses:
preset and override errors are one line with exit status 1, and --help_config / --print_config
work for every config file in configs/ and exit before any data or compilation.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ml_collections import config_dict
from testutil import REPO, load_config

from t5x_like import cli
from t5x_like import config as config_lib
from t5x_like.errors import ConfigError

TIMEOUT_S = 120
TYPES = (int, float, bool, str, tuple)


def test_every_field_has_a_type_a_default_and_a_doc():
    assert set(config_lib.SCHEMA) == {"", *config_lib.SECTIONS}
    for path, field in config_lib.FIELDS.items():
        assert field.type in TYPES, path
        assert field.doc.endswith("."), path  # A sentence, as --help_config shows it.
        if field.default is not None:
            config_lib.check_field(path, field.default)  # The default passes its own checks.
        if field.choices:
            assert field.default in field.choices, path
        if field.check is not None:
            assert field.error.startswith("{field}"), path


def test_base_config_holds_every_field_at_its_default():
    cfg = config_lib.base_config()
    for path, field in config_lib.FIELDS.items():
        section, _, name = path.rpartition(".")
        holder = cfg[section] if section else cfg
        assert holder[name] == field.default, path
        if field.default is None:  # A typed placeholder: overrides parse as the field's type.
            assert holder.get_ref(name).get_type() is field.type, path
    config_lib.check_fields(cfg)


def test_null_fields_stay_typed_and_can_be_set_back_to_none():
    cfg = load_config()
    assert cfg.data.num_shards == 8
    cfg.data.num_shards = None  # None: derived from the batch size.
    assert cfg.data.get_ref("num_shards").get_type() is int
    with pytest.raises(TypeError):
        cfg.data.num_shards = "eight"


def test_readme_field_tables_are_the_schemas():
    readme = (REPO / "configs" / "README.md").read_text()
    assert readme.endswith(config_lib.fields_markdown()), (
        "regenerate the end of configs/README.md from t5x_like.config.fields_markdown()"
    )


def test_saved_run_fills_fields_an_older_config_json_lacks(tmp_path):
    saved = json.loads(config_lib.to_json(load_config("t5")))
    del saved["train"]["microbatches"], saved["model"]["norm_position"]
    del saved["partitioning"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = load_config("saved_run", str(tmp_path))
    assert cfg.train.microbatches == 1 and cfg.model.norm_position == "pre"
    assert cfg.partitioning.preset == "fsdp_tp" and cfg.partitioning.rules is None
    assert cfg.model.scale_attention_logits is False  # Saved values are kept.
    assert cfg.data.get_ref("seq_len").get_type() is int  # Saved null: a typed placeholder.


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--config.model.num_layerz=2", r"no field 'model.num_layerz' \(did you mean "),
        ("--config.optimiser.name=sgd", r"did you mean --config.optimizer.name\?"),
        ("--config.train.steps=ten", r"--config.train.steps=ten: invalid literal for int"),
        ("--config.data.pack=maybe", r"data.pack='maybe' is a str, but it must be True or False"),
        ("--config.optimizer.b1=high", r"must be a number\). Give a value of the same type"),
    ],
)
def test_overrides_are_checked_against_the_schema(arg, message):
    with pytest.raises(ConfigError, match=message):
        cli.check_overrides(["train.py", arg])


def test_good_overrides_pass_the_check():
    cli.check_overrides(
        [
            "train.py",
            "--config.model.num_layers=2",
            "--noconfig.data.pack",
            "--config.train.eval_at_start",
            "--config.optimizer.learning_rate=1e-3",
            "--config.partitioning.rules=(('batch', 'data'),)",
            "--config.data.data_dir=/tmp/tfds",
            "--config.model.head_dim",  # absl: the value is the next argument.
            "64",
        ]
    )


def _run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Runs the scripts concurrently (each spends its time importing JAX)."""
    procs = {
        key: subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for key, args in commands.items()
    }
    results = {}
    try:
        for key, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
            results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


TRAIN = str(REPO / "experiments" / "train.py")
CONFIGS = REPO / "configs"
ONE_LINE_ERRORS = {
    "t5_size": (
        [TRAIN, f"--config={CONFIGS}/t5.py:huge"],
        "unknown size 'huge'; choose one of tiny, small, base, large, xl, xxl",
    ),
    "t5_variant": (
        [TRAIN, f"--config={CONFIGS}/t5.py:base,v2"],
        "unknown variant 'v2'; choose one of v1_1, v1_0, vanilla",
    ),
    "finetune_task": (
        [TRAIN, f"--config={CONFIGS}/t5_finetune.py:translate,small"],
        "unknown task 'translate'; choose one of summarize, classify",
    ),
    "benchmark_preset": (
        [str(REPO / "experiments" / "benchmark.py"), f"--config={CONFIGS}/benchmark.py:70b"],
        "unknown benchmark size '70b'; choose one of cpu, 125m, 1b, 8b, t5_base, t5_large",
    ),
    "unknown_field": (
        [TRAIN, "--workdir=/nonexistent", "--config.train.stpes=3"],
        "no field 'train.stpes' (did you mean --config.train.steps?)",
    ),
    "bad_value": (
        [TRAIN, "--config.mesh.data=all"],
        "--config.mesh.data=all: invalid literal for int()",
    ),
}


def test_preset_and_override_errors_are_one_line_with_status_1():
    results = _run_all({key: args for key, (args, _) in ONE_LINE_ERRORS.items()})
    for key, (_, message) in ONE_LINE_ERRORS.items():
        result = results[key]
        assert result.returncode == 1, (key, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (key, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (key, lines)
        assert lines[0].startswith("ERROR (ConfigError): --config"), (key, lines)
        assert message in lines[0], (key, lines[0])


@pytest.fixture(scope="module")
def saved_workdir(tmp_path_factory) -> str:
    """A workdir whose config.json is configs/t5.py:small's, for eval.py's default config."""
    workdir = tmp_path_factory.mktemp("saved")
    (workdir / "checkpoints").mkdir()
    config_lib.save_config(load_config("t5", "small"), str(workdir))
    return str(workdir)


def _config_commands(saved_workdir: str) -> dict[str, tuple[list[str], object]]:
    """--print_config runs of every config file in configs/: (args, the config expected)."""
    override = "--config.train.steps=7"
    commands = {}
    for path in sorted(CONFIGS.glob("*.py")):
        name = path.stem
        if name == "saved_run":
            args = [str(REPO / "experiments" / "eval.py"), f"--workdir={saved_workdir}"]
            expected = load_config("saved_run", saved_workdir)
        elif name == "benchmark":
            args = [str(REPO / "experiments" / "benchmark.py"), f"--config={path}:1b"]
            expected = load_config("benchmark", "1b")
        else:
            args = [TRAIN, f"--config={path}"]  # No --workdir: it is not needed to print.
            expected = load_config(name)
        expected.train.steps = 7
        commands[name] = ([*args, override, "--print_config"], expected)
    return commands


def test_print_config_and_help_config_for_every_config_file(saved_workdir):
    commands = _config_commands(saved_workdir)
    assert set(commands) == {
        "benchmark",
        "decoder_only",
        "encoder_only",
        "encoder_only_finetune",
        "saved_run",
        "t5",
        "t5_finetune",
    }
    runs = {name: args for name, (args, _) in commands.items()}
    runs.update({f"help {name}": [*args[:-2], "--help_config"] for name, args in runs.items()})
    runs["help sweep"] = [str(REPO / "experiments" / "sweep.py"), "--help_config"]
    results = _run_all(runs)
    for name, (_, expected) in commands.items():
        result = results[name]
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert json.loads(result.stdout) == json.loads(config_lib.to_json(expected)), name
    help_text = config_lib.field_help()
    for name in [*commands, "sweep"]:
        result = results[f"help {name}"]
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == help_text.strip(), name
    assert "model.activation (str, default 'swiglu'), one of relu, gelu" in help_text
    assert "data.num_shards (int, default None)" in help_text


def test_print_config_exits_before_any_data_or_compilation(tmp_path):
    """A dataset that does not exist and a compilation cache dir: neither is touched."""
    cache = tmp_path / "xla_cache"
    args = [
        TRAIN,
        f"--config.train.compilation_cache_dir={cache}",
        "--config.data.dataset=no_such_dataset",
        "--print_config",
    ]
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["data"]["dataset"] == "no_such_dataset"
    assert not cache.exists()


def test_config_files_state_only_what_differs_from_the_base():
    base = config_lib.base_config()
    decoder_only = load_config()
    assert config_dict.ConfigDict(decoder_only).to_dict() == {
        **base.to_dict(),
        "data": {**base.data.to_dict(), "num_shards": 8},
    }


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("optimizer.learning_rate", float("inf"), "optimizer.learning_rate=inf must be > 0"),
        ("optimizer.learning_rate", float("nan"), "optimizer.learning_rate=nan must be > 0"),
        ("optimizer.b2", -0.1, r"optimizer.b2=-0.1 must be in \[0, 1\)"),
        ("optimizer.b1", 1.0, r"optimizer.b1=1.0 must be in \[0, 1\)"),
        ("optimizer.eps", 0.0, "optimizer.eps=0.0 must be a finite number > 0"),
        ("optimizer.weight_decay", float("inf"), "optimizer.weight_decay=inf must be a finite"),
        ("optimizer.grad_clip_norm", float("nan"), "optimizer.grad_clip_norm=nan must be a fin"),
        ("optimizer.end_lr_fraction", 2.0, r"optimizer.end_lr_fraction=2.0 must be in \[0, 1\]"),
        ("train.z_loss", float("inf"), "train.z_loss"),
    ],
)
def test_non_finite_or_out_of_range_optimizer_values_are_refused(path, value, message):
    """A learning rate of inf passed validation and put NaN into every saved parameter."""
    with pytest.raises(ConfigError, match=message):
        config_lib.check_field(path, value)
