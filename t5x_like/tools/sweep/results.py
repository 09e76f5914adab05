"""A sweep's results: each run's status and final metrics, as `results.csv`, `results.md` and
the comparison plot `results.png`.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

from t5x_like.tools.sweep.files import load_json, read_metrics_jsonl, write_text
from t5x_like.tools.sweep.launch import RUN_RECORD, finished_step
from t5x_like.tools.sweep.spec import Run, format_value

RESULT_COLUMNS = (
    "status",
    "step",
    "train_loss",
    "eval_step",
    "eval_loss",
    "eval_accuracy",
    "eval_perplexity",
    "wall_s",
)


def run_status(run: Run, metrics: dict[str, dict[int, dict[str, Any]]]) -> str:
    """done | failed (exit N) | incomplete (step S/N) | not started."""
    if finished_step(run) is not None:
        return "done"
    record = load_json(os.path.join(run.workdir, RUN_RECORD))
    last_train = max(metrics.get("train", {}), default=0)
    if record and record["launches"] and record["launches"][-1]["returncode"] != 0:
        return f"failed (exit {record['launches'][-1]['returncode']})"
    if metrics or os.path.isdir(os.path.join(run.workdir, "checkpoints")):
        return f"incomplete (step {last_train}/{run.steps})"
    return "not started"


def collect(fields: Sequence[str], runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run: swept values, status and its final train/eval metrics (None if absent)."""
    rows = []
    for run in runs:
        metrics = read_metrics_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
        train, evals = metrics.get("train", {}), metrics.get("eval", {})
        last_train = train[max(train)] if train else {}
        last_eval = evals[max(evals)] if evals else {}
        record = load_json(os.path.join(run.workdir, RUN_RECORD))
        wall = sum(x["wall_s"] for x in record["launches"]) if record else None
        row: dict[str, Any] = {"name": run.name}
        row.update({f: run.overrides.get(f) for f in fields})
        row.update(
            status=run_status(run, metrics),
            step=max(train) if train else None,
            train_loss=last_train.get("loss"),
            eval_step=max(evals) if evals else None,
            eval_loss=last_eval.get("loss"),
            eval_accuracy=last_eval.get("accuracy"),
            eval_perplexity=last_eval.get("perplexity"),
            wall_s=wall,
            workdir=run.workdir,
        )
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value)


def markdown_table(fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table (numbers to 4 significant digits)."""
    columns = ["name", *fields, *RESULT_COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(root: str, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    """`results.csv` (full precision), `results.md` and `results.png` in `root`; their paths."""
    columns = ["name", *fields, *RESULT_COLUMNS, "workdir"]
    csv_path = os.path.join(root, "results.csv")
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else _csv_value(row[c]) for c in columns})
    md_path = os.path.join(root, "results.md")
    write_text(md_path, markdown_table(fields, rows))
    png_path = os.path.join(root, "results.png")
    plot_results(png_path, rows)
    return [csv_path, md_path, png_path]


def _csv_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else format_value(value)


def plot_results(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Eval loss vs step per run (train loss dashed), and each run's final eval loss as bars."""
    # A figure on its own Agg canvas: no pyplot, so the process's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 0.5 * max(len(rows), 8) + 1))
    FigureCanvasAgg(fig)
    curves, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for i, row in enumerate(rows):
        metrics = read_metrics_jsonl(os.path.join(row["workdir"], "metrics.jsonl"))
        color = f"C{i % 10}"
        for split, style in (("eval", "o-"), ("train", "--")):
            steps = metrics.get(split, {})
            if steps:
                curves.plot(
                    list(steps),
                    [r.get("loss", math.nan) for r in steps.values()],
                    style,
                    color=color,
                    alpha=1.0 if split == "eval" else 0.35,
                    markersize=3,
                    label=row["name"] if split == "eval" else None,
                )
    curves.set(xlabel="step", ylabel="loss", title="eval loss (solid), train loss (dashed)")
    curves.grid(alpha=0.3)
    if curves.get_legend_handles_labels()[0]:
        curves.legend(fontsize=7)
    names = [row["name"] for row in rows]
    finals = [math.nan if row["eval_loss"] is None else row["eval_loss"] for row in rows]
    bars.barh(range(len(rows)), finals, color=[f"C{i % 10}" for i in range(len(rows))])
    bars.set_yticks(range(len(rows)), names, fontsize=7)
    bars.invert_yaxis()
    for i, value in enumerate(finals):
        if not math.isnan(value):
            bars.text(value, i, f" {value:.3f}", va="center", fontsize=7)
    finite = [v for v in finals if not math.isnan(v)]
    if finite:  # Zoomed in: runs of a sweep differ by a fraction of their loss.
        bars.set_xlim(0.95 * min(finite), 1.03 * max(finite))
    bars.set(xlabel="final eval loss", title="final eval loss per run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
