"""Sweeps: spec parsing, run naming, launch commands and scripts, a real local sweep, collecting."""

import csv
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys

import pytest
from testutil import REPO

from t5x_like.errors import ConfigError
from t5x_like.experiment import validation
from t5x_like.tools import plotting, sweep
from t5x_like.training.metrics_writer import read_metrics

SCRIPT = str(REPO / "experiments" / "sweep.py")
DECODER = str(REPO / "configs" / "decoder_only.py")
# A model that trains in a few seconds on the test corpus (its cached 256-piece vocabulary).
TINY = [
    "model.d_model=32",
    "model.num_layers=1",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.mlp_dim=64",
    "data.seq_len=16",
    "data.vocab_size=256",
    "train.batch_size=8",
    "train.steps=4",
    "train.log_every=1",
    "train.eval_every=4",
    "train.eval_at_start=false",
    "train.eval_batches=1",
    "train.checkpoint_every=4",
    "train.async_checkpoint=false",
    "train.compilation_cache_dir=",
    "optimizer.warmup_steps=1",
]


# Other partitioning presets ignore partitioning.rules (the sweep below sets them).
_CUSTOM_RULES = (
    ["partitioning.preset=custom"]
    if "preset" in sweep.load_config(DECODER, [])[0].partitioning
    else []
)


def _sweep_script(*args, timeout=240):
    """experiments/sweep.py on one CPU device (its runs inherit that environment)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    command = [sys.executable, SCRIPT, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


# ----------------------------------------------------------------------------- spec parsing


def test_axes_split_on_top_level_separators_only():
    axes = sweep.parse_axes(
        "model.num_layers=2, 4 ;config.data.text_key='a,b',c;partitioning.rules=((1,2),(3,4)),();"
    )
    assert axes == [
        sweep.Axis("model.num_layers", ("2", "4")),
        sweep.Axis("data.text_key", ("a,b", "c")),  # Quotes keep the comma; `config.` dropped.
        sweep.Axis("partitioning.rules", ("((1,2),(3,4))", "()")),
    ]
    assert sweep.parse_override("--config.train.steps=50") == ("train.steps", "50")
    assert sweep.parse_override("train.compilation_cache_dir=") == (
        "train.compilation_cache_dir",
        "",
    )


def test_grid_is_the_cartesian_product_and_zip_pairs():
    fields, runs = sweep.expand(["a.x=1,2;a.y=p,q,r"], [])
    assert fields == ["a.x", "a.y"]
    assert runs == [{"a.x": x, "a.y": y} for x in "12" for y in "pqr"]  # First axis slowest.

    fields, runs = sweep.expand([], ["a.x=1,2,3;a.y=p,q,r"])
    assert runs == [{"a.x": "1", "a.y": "p"}, {"a.x": "2", "a.y": "q"}, {"a.x": "3", "a.y": "r"}]

    fields, runs = sweep.expand(["b.z=u,v"], ["a.x=1,2;a.y=p,q"])  # 2 (grid) x 2 (pairs).
    assert fields == ["b.z", "a.x", "a.y"]
    assert [tuple(r.values()) for r in runs] == [
        ("u", "1", "p"),
        ("u", "2", "q"),
        ("v", "1", "p"),
        ("v", "2", "q"),
    ]


@pytest.mark.parametrize(
    "grid, zipped, message",
    [
        ([], [], "Nothing to sweep"),
        (["model.num_layers"], [], r"'model.num_layers' is not of the form"),
        (["=1,2"], [], "is not of the form"),
        (["model.num_layers=1,,2"], [], "empty value for 'model.num_layers'"),
        (["model.num_layers=(1,2"], [], "Unbalanced"),
        ([], ["a.x=1,2;a.y=p"], r"as many values each, got \{'a.x': 2, 'a.y': 1\}"),
        (["a.x=1,2"], ["a.x=3;a.y=4"], r"\['a.x'\] are swept more than once"),
        (["a.x=1,2,1"], [], r"repeats the run \{'a.x': '1'\}"),
    ],
)
def test_bad_specs_are_errors(grid, zipped, message):
    with pytest.raises(ConfigError, match=message):
        sweep.expand(grid, zipped)


def test_values_are_parsed_by_the_fields_types(tmp_path):
    spec = sweep.SweepSpec(
        config=DECODER,
        overrides=["train.steps=50", "config.train.log_every=5", *_CUSTOM_RULES],
        sweep=["model.num_layers=1,2", "optimizer.learning_rate=1e-3"],
        sweep_zip=[
            "train.eval_at_start=true,false;model.activation=gelu,relu;"
            "model.num_kv_heads=2,4;partitioning.rules=(('batch','data'),),"
            "(('batch',('data','fsdp')),)"
        ],
    )
    fields, runs = sweep.plan(spec, str(tmp_path), device_count=8)
    assert fields == [
        "model.num_layers",
        "optimizer.learning_rate",
        "train.eval_at_start",
        "model.activation",
        "model.num_kv_heads",
        "partitioning.rules",
    ]
    assert len(runs) == 4 and [r.steps for r in runs] == [50] * 4
    first = runs[0].overrides
    assert first["model.num_layers"] == 1 and type(first["model.num_layers"]) is int
    assert (
        first["optimizer.learning_rate"] == 0.001
        and type(first["optimizer.learning_rate"]) is float
    )
    assert (
        first["train.eval_at_start"] is True and runs[1].overrides["train.eval_at_start"] is False
    )
    assert first["model.activation"] == "gelu"
    assert first["model.num_kv_heads"] == 2  # A placeholder(int) field.
    assert first["partitioning.rules"] == (("batch", "data"),)
    assert runs[1].overrides["partitioning.rules"] == (("batch", ("data", "fsdp")),)
    # Base overrides come first in every command, then the run's own values, as written.
    command = runs[3].command
    assert command[:2] == [sys.executable, str(REPO / "experiments" / "train.py")]
    assert command[2:5] == [
        f"--config={DECODER}",
        f"--workdir={tmp_path / runs[3].name}",
        "--config.train.steps=50",
    ]
    assert "--config.model.num_layers=2" in command and "--config.model.activation=relu" in command
    assert "--config.optimizer.learning_rate=1e-3" in command


@pytest.mark.parametrize(
    "sweep_spec, override, message",
    [
        (
            "model.num_layerz=1,2",
            [],
            r"unknown config field 'model.num_layerz'.*'model.num_layers'",
        ),
        ("modell.num_layers=1", [], r"unknown config field 'modell.num_layers'.*'model'"),
        (
            "model.num_layers=1",
            ["train.stepz=3"],
            r"--override: unknown config field 'train.stepz'",
        ),
        ("model.num_layers=1,1.5", [], r"--config.model.num_layers=1.5: invalid literal for int"),
        ("train.eval_at_start=true,maybe", [], r"--config.train.eval_at_start=maybe"),
        ("optimizer.warmup_steps=1,10", ["train.steps=5"], r"optimizer.warmup_steps=10 must be"),
        ("mesh.data=3", [], r"train.batch_size=16 is not divisible by .* mesh.data x mesh.fsdp"),
        ("train.steps=3,4", ["train.steps=5"], r"\['train.steps'\] are both overridden and swept"),
    ],
)
def test_unknown_fields_and_bad_values_fail_before_any_run(tmp_path, sweep_spec, override, message):
    spec = sweep.SweepSpec(config=DECODER, overrides=override, sweep=[sweep_spec])
    with pytest.raises(ConfigError, match=message):
        sweep.plan(spec, str(tmp_path / "root"))
    assert not os.path.exists(tmp_path / "root")


def test_parameterised_config_files_work(tmp_path):
    spec = sweep.SweepSpec(
        config=f"{REPO / 'configs' / 't5.py'}:small", sweep=["model.num_decoder_layers=2,4"]
    )
    _, runs = sweep.plan(spec, str(tmp_path))
    assert runs[0].command[2] == f"--config={REPO / 'configs' / 't5.py'}:small"
    assert [r.name for r in runs] == ["num_decoder_layers=2", "num_decoder_layers=4"]


# ----------------------------------------------------------------------------- naming


def test_run_names_are_readable_unique_deterministic_and_safe():
    fields = ["model.num_layers", "optimizer.learning_rate", "data.vocab_path"]
    runs = [
        {"model.num_layers": n, "optimizer.learning_rate": lr, "data.vocab_path": path}
        for n in (2, 4)
        for lr in (1e-3, 3e-4, 1e-5)
        for path in ("/v/a b.model", "/v/a_b.model")  # The same once made safe.
    ]
    names = sweep.run_names(fields, runs)
    assert names == sweep.run_names(fields, [dict(r) for r in runs])  # Deterministic.
    assert len(set(names)) == len(runs)
    assert all(
        re.fullmatch(r"[A-Za-z0-9._=+-]+", n) and len(n) <= sweep.MAX_NAME_LEN for n in names
    )
    assert names[0].startswith("num_layers=2+learning_rate=0.001+vocab_path=_v_a_b.model-")
    assert "learning_rate=1e-05" in names[4]

    assert sweep.run_names(
        ["model.num_layers", "optimizer.learning_rate"],
        [{"model.num_layers": 2, "optimizer.learning_rate": 1e-3}],
    ) == ["num_layers=2+learning_rate=0.001"]
    # Two fields with the same last component keep their whole paths.
    assert sweep.run_names(["a.rate", "b.rate"], [{"a.rate": 1, "b.rate": 2}]) == [
        "a.rate=1+b.rate=2"
    ]
    long = sweep.run_names(["x.y"], [{"x.y": "v" * 200}, {"x.y": "v" * 199 + "w"}])
    assert len(set(long)) == 2 and all(len(n) == sweep.MAX_NAME_LEN for n in long)
    assert long[0][-9] == "-" and long[0][:-9] == long[1][:-9]


# ----------------------------------------------------------------------------- print and script


def test_print_and_script_launch_nothing_and_carry_the_overrides(tmp_path):
    root = tmp_path / "root"
    args = [
        f"--workdir={root}",
        f"--config={DECODER}",
        "--override=train.steps=7",
        "--override=optimizer.warmup_steps=1",
        "--config.train.log_every=3",  # train.py's own syntax passes through.
        "--sweep=model.num_layers=1,2",
        "--sweep_zip=optimizer.learning_rate=1e-3,3e-3;model.activation=gelu,relu",
        "--python=/bin/echo",  # launch.sh then only echoes each command into its train.log.
    ]
    printed = _sweep_script(*args, "--launch=print")
    assert printed.returncode == 0, printed.stderr[-3000:]
    lines = printed.stdout.splitlines()
    record = json.load(open(root / "sweep.json"))
    assert len(lines) == len(record["runs"]) == 4
    for line, run in zip(lines, record["runs"], strict=True):
        argv = shlex.split(line)
        assert argv == run["command"]
        assert argv[0] == "/bin/echo" and f"--workdir={root / run['name']}" in argv
        assert "--config.train.steps=7" in argv and "--config.train.log_every=3" in argv
        for field, value in run["raw_overrides"].items():
            assert f"--config.{field}={value}" in argv
    assert record["fields"] == ["model.num_layers", "optimizer.learning_rate", "model.activation"]
    assert record["runs"][3]["overrides"] == {
        "model.num_layers": 2,
        "optimizer.learning_rate": 0.003,
        "model.activation": "relu",
    }
    assert not any((root / run["name"]).exists() for run in record["runs"])

    scripted = _sweep_script(*args, "--launch=script")
    assert scripted.returncode == 0, scripted.stderr[-3000:]
    launch = (root / "launch.sh").read_text()
    cases = re.findall(r"^\s+(\d+)\) mkdir -p (\S+) && (.*) >> (\S+) 2>&1 ;;$", launch, re.M)
    assert [int(c[0]) for c in cases] == [0, 1, 2, 3]
    for (_, workdir, command, log), run in zip(cases, record["runs"], strict=True):
        assert shlex.split(command) == run["command"] and shlex.split(workdir) == [run["workdir"]]
        assert shlex.split(log) == [os.path.join(run["workdir"], "train.log")]
    sbatch = (root / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-3" in sbatch
    assert f'bash {root / "launch.sh"} "$SLURM_ARRAY_TASK_ID"' in sbatch
    assert not any((root / run["name"]).exists() for run in record["runs"])

    # What array task 2 runs: run 2's command, its log in run 2's workdir.
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2")
    task = subprocess.run(["bash", "-c", sbatch], env=env, capture_output=True, timeout=30)
    assert task.returncode == 0, task.stderr
    echoed = (root / record["runs"][2]["name"] / "train.log").read_text().split()
    assert echoed == record["runs"][2]["command"][1:]
    missing = subprocess.run(
        ["bash", str(root / "launch.sh"), "9"], capture_output=True, timeout=30
    )
    assert missing.returncode == 2 and b"no run 9 (0..3)" in missing.stderr


# ----------------------------------------------------------------------------- launching


def test_local_launch_runs_everything_and_fails_at_the_end(tmp_path):
    """--python=/bin/false: every run fails at once; the sweep goes on, then exits 1."""
    root = tmp_path / "root"
    result = _sweep_script(
        f"--workdir={root}",
        "--sweep=model.num_layers=1,2",
        "--python=/bin/false",
        "--device_count=1",
    )
    assert result.returncode == 1
    assert "2 of 2 runs failed: num_layers=1, num_layers=2" in result.stderr
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert [r["status"] for r in rows] == ["failed (exit 1)"] * 2
    assert "| num_layers=2 | 2 | failed (exit 1) |" in result.stdout
    for name in ("num_layers=1", "num_layers=2"):
        record = json.load(open(root / name / sweep.RUN_RECORD))
        assert [launch["returncode"] for launch in record["launches"]] == [1]
        assert "=== sweep launch" in (root / name / "train.log").read_text()


def test_run_one_logs_output_and_records_each_launch(tmp_path):
    run = sweep.Run(
        name="r",
        workdir=str(tmp_path / "r"),
        overrides={},
        raw_overrides={},
        command=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
        steps=4,
    )
    assert sweep.run_one(run)["returncode"] == 3
    assert sweep.run_one(run, timeout_s=60)["returncode"] == 3
    assert (tmp_path / "r" / "train.log").read_text().count("\nboom\n") == 2
    record = json.load(open(tmp_path / "r" / sweep.RUN_RECORD))
    assert [x["returncode"] for x in record["launches"]] == [3, 3]
    assert all(x["wall_s"] > 0 for x in record["launches"])


def test_real_sweep_trains_collects_and_skips_finished_runs(corpus_dir, tmp_path):
    root = tmp_path / "sweep"
    args = [
        f"--workdir={root}",
        f"--config={DECODER}",
        *[f"--override={o}" for o in TINY],
        f"--override=data.data_dir={corpus_dir}",
        "--sweep_zip=optimizer.learning_rate=1e-3,3e-3;train.label_smoothing=0.0,0.1",
    ]
    first = _sweep_script(*args)
    assert first.returncode == 0, first.stderr[-5000:]
    names = ["learning_rate=0.001+label_smoothing=0.0", "learning_rate=0.003+label_smoothing=0.1"]
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert sorted(r["name"] for r in rows) == names  # Ranked by eval loss.
    rows.sort(key=lambda r: r["name"])
    assert [float(r["optimizer.learning_rate"]) for r in rows] == [1e-3, 3e-3]
    assert [float(r["train.label_smoothing"]) for r in rows] == [0.0, 0.1]
    for row in rows:
        metrics = {split: read_metrics(row["workdir"], split) for split in ("train", "eval")}
        assert row["status"] == "done" and row["step"] == row["eval_step"] == "4"
        assert float(row["train_loss"]) == metrics["train"][4]["loss"]
        assert float(row["eval_loss"]) == metrics["eval"][4]["loss"]
        assert float(row["eval_accuracy"]) == metrics["eval"][4]["accuracy"]
        assert float(row["eval_perplexity"]) == metrics["eval"][4]["perplexity"]
        assert all(math.isfinite(float(row[k])) for k in ("train_loss", "eval_loss", "wall_s"))
        assert os.path.isdir(os.path.join(row["workdir"], "checkpoints", "4"))
        saved = json.load(open(os.path.join(row["workdir"], "config.json")))
        assert saved["optimizer"]["learning_rate"] == float(row["optimizer.learning_rate"])
    assert rows[0]["train_loss"] != rows[1]["train_loss"]
    png = (root / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    markdown = (root / "results.md").read_text()
    assert markdown in first.stdout and markdown.count("| done |") == 2
    _check_ranked_results(root, rows, markdown, tmp_path)

    before = {n: (root / n / "metrics.jsonl").read_bytes() for n in names}
    logs = {n: (root / n / "train.log").read_bytes() for n in names}
    again = _sweep_script(*args, "--device_count=1")
    assert again.returncode == 0, again.stderr[-5000:]
    for name in names:
        assert f"skipping {name}: finished at step 4" in again.stderr
        assert (root / name / "metrics.jsonl").read_bytes() == before[name]
        assert (root / name / "train.log").read_bytes() == logs[name]
    assert sorted(csv.DictReader(open(root / "results.csv")), key=lambda r: r["name"]) == rows


def _check_ranked_results(root, rows, markdown, tmp_path):
    """The real sweep's table ranked by eval loss with the best marked, the model's size as the
    trainer logged it (equal to the count from the config's shapes), its tokens/s, and
    report.py --sweep drawing one line per member."""
    ranked = list(csv.DictReader(open(root / "results.csv")))
    finals = [float(r["eval_loss"]) for r in ranked]
    assert finals == sorted(finals) and finals[0] < finals[1]
    assert [(r["rank"], r["best"]) for r in ranked] == [("1", "*"), ("2", "")]
    best, other = ranked[0]["name"], ranked[1]["name"]
    assert markdown.startswith(
        f"Sorted by eval_loss (lower is better); best (*): {best} with eval_loss = "
        f"{finals[0]:.4g}.\n"
    )
    assert f"| 1 | * | {best} |" in markdown and f"| 2 |  | {other} |" in markdown
    cfg, _ = sweep.load_config(DECODER, [sweep.parse_override(o) for o in TINY])
    params_bytes, _ = validation.state_bytes(cfg)
    for row in rows:
        assert int(row["params"]) == params_bytes // 4 > 0  # float32 params.
        train = read_metrics(row["workdir"], "train").values()
        reported = [r["tokens_per_sec"] for r in train if "tokens_per_sec" in r]
        assert float(row["tokens_per_sec"]) == statistics.median(reported[1:]) > 0
        assert row["error"] == ""

    out = tmp_path / "members.png"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    script = str(REPO / "experiments" / "report.py")
    report = subprocess.run(
        [sys.executable, script, f"--sweep={root}", f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert markdown.splitlines()[0] in report.stdout and f"Wrote {out}" in report.stdout
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # Two panels (loss, accuracy) of members_figure's size.
    size = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert size == (1300, 480)
    fig, skipped = plotting.members_figure(
        [r["workdir"] for r in ranked],
        ("loss", "accuracy"),
        labels=[best, other],
        highlight=[best],
    )
    assert skipped == [] and [ax.get_title() for ax in fig.axes] == ["eval loss", "eval accuracy"]
    for ax, metric in zip(fig.axes, ("loss", "accuracy"), strict=True):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [f"{best} (best)", other]
        assert lines[0].get_linewidth() > lines[1].get_linewidth()
        for line, row in zip(lines, ranked, strict=True):
            assert list(line.get_xdata()) == [4]
            assert list(line.get_ydata()) == [read_metrics(row["workdir"], "eval")[4][metric]]


# ----------------------------------------------------------------------------- collecting


def _write_metrics(workdir, records):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        for split, step, loss in records:
            f.write(
                json.dumps({"step": step, "split": split, "loss": loss, "accuracy": 0.5}) + "\n"
            )


def test_collect_only_marks_failed_and_unfinished_runs(tmp_path):
    root = tmp_path / "root"
    spec = sweep.SweepSpec(
        config=DECODER,
        overrides=["train.steps=4", "optimizer.warmup_steps=1"],
        sweep=["model.num_layers=1,2,3,4,5"],
    )
    fields, runs = sweep.plan(spec, str(root))
    sweep.write_sweep_json(str(root), spec, fields, runs)
    done, no_checkpoint, failed, partial, untouched = (r.workdir for r in runs)
    # Finished: a train record and a checkpoint at step 4 (a resume re-logged step 2: last wins).
    _write_metrics(
        done, [("train", 2, 5.0), ("train", 2, 4.5), ("eval", 2, 4.8), ("train", 4, 4.0)]
    )
    _write_metrics(done, [("eval", 4, 4.25)])
    os.makedirs(os.path.join(done, "checkpoints", "4"))
    with open(os.path.join(done, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "spl')  # A line cut short by a kill is ignored.
    # Logged the last step but its checkpoint never landed.
    _write_metrics(no_checkpoint, [("train", 4, 4.1)])
    # The launch failed after two steps.
    _write_metrics(failed, [("train", 2, 5.5)])
    with open(os.path.join(failed, sweep.RUN_RECORD), "w") as f:
        json.dump({"launches": [{"started": 0.0, "wall_s": 12.5, "returncode": 1}]}, f)
    # Killed from outside (no record of the launch ending).
    _write_metrics(partial, [("train", 1, 6.0)])
    os.makedirs(os.path.join(partial, "checkpoints"))

    result = _sweep_script(f"--workdir={root}", "--collect_only")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["name"]: r for r in csv.DictReader(open(root / "results.csv"))}
    assert [rows[r.name]["status"] for r in runs] == [
        "done",
        "incomplete (step 4/4)",
        "failed (exit 1)",
        "incomplete (step 1/4)",
        "not started",
    ]
    first = rows[runs[0].name]
    assert (first["model.num_layers"], first["step"], first["eval_step"]) == ("1", "4", "4")
    assert (float(first["train_loss"]), float(first["eval_loss"])) == (4.0, 4.25)
    assert first["wall_s"] == "" and rows[runs[2].name]["wall_s"] == "12.5"
    assert rows[runs[4].name]["train_loss"] == rows[runs[4].name]["step"] == ""
    assert (root / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert "| num_layers=3 | 3 | failed (exit 1) | 2 |  |  | 5.5 |" in result.stdout

    missing = _sweep_script(f"--workdir={tmp_path / 'nowhere'}", "--collect_only")
    assert missing.returncode == 1 and "is not a sweep root" in missing.stderr
