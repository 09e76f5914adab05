"""Sweep results a researcher reads: the table ranked by the target metric with the best run
marked, parameter count, tokens/s, final step, status and failed runs' errors; run names a
shell and report.py accept; report.py --sweep plotting every member in one figure."""

import csv
import os
import shlex
import subprocess
import sys

import pytest
from testutil import REPO

from t5x_like.errors import ConfigError
from t5x_like.tools import plotting, sweep

DECODER = str(REPO / "configs" / "decoder_only.py")
# A model that trains in seconds on the test corpus (its cached 256-piece vocabulary).
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
UNSAFE = set(",;&|$ '\"`()<>*?![]{}#~\\")


def _script(name, *args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    command = [sys.executable, str(REPO / "experiments" / f"{name}.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_run_names_need_no_quoting_and_survive_report_workdirs(tmp_path):
    spec = sweep.SweepSpec(
        config=DECODER,
        overrides=["train.steps=4", "optimizer.warmup_steps=1"],
        sweep=[
            "data.inputs_prefix='a, b','x;y|z&$`q','it''s \"q\"',plain",
            "model.num_layers=1,2",
        ],
    )
    _, runs = sweep.plan(spec, str(tmp_path))
    names = [run.name for run in runs]
    assert len(runs) == 8 and len(set(names)) == 8
    for name in names:
        assert not UNSAFE & set(name), name
        assert shlex.quote(name) == name and shlex.split(f"ls {name}") == ["ls", name]
        # report.py splits --workdirs at commas: a member's path comes back whole.
        assert f"{tmp_path}/{name}".split(",") == [f"{tmp_path}/{name}"]
    assert names[0] == "inputs_prefix=a__b+num_layers=1"  # Readable.
    assert names[-1] == "inputs_prefix=plain+num_layers=2"
    assert sweep.plan(spec, str(tmp_path))[1][5].name == names[5]  # Deterministic.


def _row(name, status="done", **metrics):
    return {"name": name, "status": status, "eval_loss": None, **metrics}


def test_rank_orders_marks_ties_and_puts_unscored_runs_last():
    rows = [
        _row("a", eval_loss=3.0, eval_accuracy=0.30),
        _row("failed", status="failed (exit 1)"),
        _row("b", eval_loss=2.5, eval_accuracy=0.40),
        _row("c", eval_loss=2.5, eval_accuracy=0.20),
        _row("nan", eval_loss=float("nan"), eval_accuracy=0.10),
    ]
    by_loss = sweep.rank(rows)  # eval_loss: lower is better; b and c tie for best.
    assert [(r["name"], r["rank"], r["best"]) for r in by_loss] == [
        ("b", 1, "*"),
        ("c", 1, "*"),
        ("a", 3, ""),
        ("failed", None, ""),
        ("nan", None, ""),
    ]
    by_accuracy = sweep.rank(rows, "eval_accuracy")  # Higher is better, by its name.
    assert [r["name"] for r in by_accuracy] == ["b", "a", "c", "nan", "failed"]
    assert [r["best"] for r in by_accuracy] == ["*", "", "", "", ""]
    assert [r["name"] for r in sweep.rank(rows, "eval_accuracy", "min")][:1] == ["nan"]
    assert sweep.metric_mode("eval_decode_bleu") == "max"
    assert sweep.metric_mode("eval_perplexity") == "min"
    assert sweep.metric_mode("tokens_per_sec") == "max"
    with pytest.raises(ConfigError, match="No finished run has the metric 'eval_acuracy'"):
        sweep.rank(rows, "eval_acuracy")
    table = sweep.markdown_table([], by_loss)
    assert table.startswith(
        "Sorted by eval_loss (lower is better); best (*): b, c with eval_loss = 2.5.\n"
    )
    assert "| 1 | * | b |" in table and "|  |  | failed | failed (exit 1) |" in table


def test_last_error_is_the_line_that_says_why():
    log = [
        "I1206 12:00:00 trainer.py:10] step 2/4 loss 5.1",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: the batch | is | odd",
        "I1206 12:00:01 cli.py:9] exiting",
    ]
    assert sweep.last_error(log) == "ValueError: the batch | is | odd"
    one_line = ["I1206 x", "ERROR (FileNotFoundError): Dataset 'x' is not prepared", ""]
    assert sweep.last_error(one_line, 1) == one_line[1]
    assert sweep.last_error(["step 3"], -9) == "killed by signal 9"
    assert sweep.last_error(["a", "last words  "], 2) == "last words"
    assert sweep.last_error([], 1) is None
    assert len(sweep.last_error(["ERROR (X): " + "y" * 1000])) == 300


def test_a_failed_member_is_shown_with_its_error(corpus_dir, tmp_path):
    """A real member whose dataset does not exist: the table gives its status and the line of
    its train.log that says why, and ranks nothing. (tests/test_sweep.py's real sweep checks
    the ranking, sizes, speeds and report.py --sweep on trained members.)"""
    root = tmp_path / "sweep"
    result = _script(
        "sweep",
        f"--workdir={root}",
        f"--config={DECODER}",
        "--device_count=1",
        *[f"--override={o}" for o in TINY],
        f"--override=data.data_dir={corpus_dir}",
        "--override=data.vocab_dataset=t5x_like_corpus",
        "--sweep=data.dataset=no_such_dataset",
        "--metric=eval_accuracy",
    )
    # A failed member fails the sweep, after the table is written.
    assert result.returncode == 1, result.stderr[-5000:]
    assert "1 of 1 runs failed: dataset=no_such_dataset" in result.stderr
    (row,) = csv.DictReader(open(root / "results.csv"))
    assert row["name"] == "dataset=no_such_dataset" and row["status"] == "failed (exit 1)"
    assert row["error"].startswith(
        f"ERROR (FileNotFoundError): Dataset 'no_such_dataset' is not prepared under "
        f"data_dir='{corpus_dir}'"
    )
    log = (root / row["name"] / "train.log").read_text().splitlines()
    full = " ".join(log[-1].split())
    assert row["error"] == (full if len(full) <= 300 else full[:297] + "...")
    assert row["rank"] == row["best"] == row["params"] == row["step"] == row["eval_loss"] == ""
    markdown = (root / "results.md").read_text()
    assert markdown in result.stdout
    assert markdown.startswith(
        "Sorted by eval_accuracy (higher is better); no run has logged it yet.\n"
    )
    assert "|  |  | dataset=no_such_dataset | no_such_dataset | failed (exit 1) |" in markdown
    assert markdown.rstrip().endswith(f"{row['error'].replace('|', chr(92) + '|')} |")
    # The metric was recorded: --collect_only ranks by it again.
    assert sweep.load_sweep_metric(str(root)) == ("eval_accuracy", "auto")
    with pytest.raises(ValueError, match="No run logged eval 'loss'"):
        plotting.members_figure([str(root / row["name"])], ("loss",))
