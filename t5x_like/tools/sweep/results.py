"""A sweep's results: each run's status, size, speed and final metrics, ranked by the sweep's
target metric, as `results.csv`, `results.md` and the comparison plot `results.png`.

The target metric (`eval_loss` unless the sweep names another: any `eval_<key>` or
`train_<key>` of the runs' last logged records, `tokens_per_sec`, `params`) is minimised or
maximised by its name (`metric_mode`: losses and perplexities down, accuracies, BLEU, MFU and
throughput up) unless the sweep says which. Rows are sorted best first; runs without the metric
(failed, not started) follow in the sweep's order, a failed run with its one-line error taken
from its `train.log`.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from collections.abc import Sequence
from typing import Any

from t5x_like.errors import ConfigError
from t5x_like.tools.sweep.files import load_json, read_metrics_jsonl, write_text
from t5x_like.tools.sweep.launch import RUN_RECORD, finished_step
from t5x_like.tools.sweep.spec import Run, format_value

DEFAULT_METRIC = "eval_loss"
# Metrics a higher value of is better; any other is minimised (losses, perplexity, time).
_HIGHER_IS_BETTER = re.compile(
    r"(accuracy|acc|bleu|exact_match|f1|rouge\w*|mfu|tokens_per_sec|steps_per_sec|"
    r"model_flops_per_sec|precision|recall|matthews\w*|pearson\w*|spearman\w*|score)$"
)
RESULT_COLUMNS = (
    "status",
    "step",
    "params",
    "tokens_per_sec",
    "train_loss",
    "eval_step",
    "eval_loss",
    "eval_accuracy",
    "eval_perplexity",
    "wall_s",
)
# The trainer's log line giving the model's size ("Model: 3,913,216 parameters, ...").
_PARAMS_LINE = re.compile(r"Model: ([\d,]+) parameters")
# Lines of a train.log that state why a run ended: the scripts' one-line errors, absl ERROR
# records, a traceback's last line, the sweep's own timeout note.
_ERROR_LINE = re.compile(
    r"^(ERROR \(|FATAL |Error: |Aborted |=== sweep: run timed out|E\d{4} |"
    r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b)"
)
_MAX_ERROR_CHARS = 300


def metric_mode(metric: str, mode: str = "auto") -> str:
    """`min` or `max`: `mode` itself, or for `auto` what the metric's name says."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ConfigError(f"metric mode {mode!r} must be one of auto, min, max.")
    return "max" if _HIGHER_IS_BETTER.search(metric) else "min"


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


def _read_log(workdir: str) -> list[str]:
    try:
        with open(os.path.join(workdir, "train.log"), encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def last_error(lines: Sequence[str], returncode: int | None = None) -> str | None:
    """The line of a run's log that says why it ended (the last error-like line; else the
    signal that killed it, else its last line), cut to `_MAX_ERROR_CHARS`."""
    found = next((line for line in reversed(lines) if _ERROR_LINE.match(line.strip())), None)
    if found is None and returncode is not None and returncode < 0:
        found = f"killed by signal {-returncode}"
    if found is None:
        found = next((line for line in reversed(lines) if line.strip()), None)
    if found is None:
        return None
    found = " ".join(found.split())
    return found if len(found) <= _MAX_ERROR_CHARS else found[: _MAX_ERROR_CHARS - 3] + "..."


def param_count(lines: Sequence[str]) -> int | None:
    """The model's parameter count as the trainer logged it (its last start), or None."""
    for line in reversed(lines):
        match = _PARAMS_LINE.search(line)
        if match:
            return int(match.group(1).replace(",", ""))
    return None


def throughput(train: dict[int, dict[str, Any]]) -> float | None:
    """Median tokens/s over the logged train intervals that report it, leaving out the first
    of them (warm-up) when there are others."""
    values = [r["tokens_per_sec"] for r in train.values() if _finite(r.get("tokens_per_sec"))]
    if len(values) > 1:
        values = values[1:]
    return float(statistics.median(values)) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect(fields: Sequence[str], runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run, in the sweep's order: swept values, status, parameter count, tokens/s,
    the final train/eval metrics (every key of the last records, as `train_<key>` and
    `eval_<key>`; None if absent) and, for a failed run, its error line."""
    rows = []
    for run in runs:
        metrics = read_metrics_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
        train, evals = metrics.get("train", {}), metrics.get("eval", {})
        last_train = train[max(train)] if train else {}
        last_eval = evals[max(evals)] if evals else {}
        record = load_json(os.path.join(run.workdir, RUN_RECORD))
        wall = sum(x["wall_s"] for x in record["launches"]) if record else None
        log = _read_log(run.workdir)
        row: dict[str, Any] = {"name": run.name}
        row.update({f: run.overrides.get(f) for f in fields})
        status = run_status(run, metrics)
        for prefix, last in (("train", last_train), ("eval", last_eval)):
            row.update(
                {f"{prefix}_{k}": v for k, v in last.items() if k not in ("step", "split", "time")}
            )
        returncode = record["launches"][-1]["returncode"] if record else None
        row.update(
            status=status,
            step=max(train) if train else None,
            params=param_count(log),
            tokens_per_sec=throughput(train),
            train_loss=last_train.get("loss"),
            eval_step=max(evals) if evals else None,
            eval_loss=last_eval.get("loss"),
            eval_accuracy=last_eval.get("accuracy"),
            eval_perplexity=last_eval.get("perplexity"),
            wall_s=wall,
            error=last_error(log, returncode) if status.startswith("failed") else None,
            workdir=run.workdir,
        )
        rows.append(row)
    return rows


def rank(
    rows: Sequence[dict[str, Any]], metric: str = DEFAULT_METRIC, mode: str = "auto"
) -> list[dict[str, Any]]:
    """`rows` best first by `metric` (`mode`: min, max or auto), each with `rank` (1 = best;
    equal values share a rank) and `best` ('*' on the best rows); rows without a finite
    value of the metric follow in their order, unranked.

    Raises:
      ConfigError: when a finished run has no such metric (it is misspelt), naming those it has.
    """
    direction = metric_mode(metric, mode)
    scored = [row for row in rows if _finite(row.get(metric))]
    finished = [row for row in rows if row.get("status") == "done"]
    if finished and not any(metric in row for row in finished):
        known = sorted({k for row in finished for k, v in row.items() if _finite(v)})
        raise ConfigError(
            f"No finished run has the metric {metric!r}: rank by one of {known} "
            "(e.g. --metric=eval_accuracy)."
        )
    scored.sort(key=lambda row: row[metric], reverse=direction == "max")
    out = []
    for position, row in enumerate(scored):
        tied = position and row[metric] == scored[position - 1][metric]
        place = out[-1]["rank"] if tied else position + 1
        out.append({**row, "rank": place, "best": "*" if place == 1 else ""})
    out += [{**row, "rank": None, "best": ""} for row in rows if not _finite(row.get(metric))]
    return out


def columns(fields: Sequence[str], metric: str = DEFAULT_METRIC) -> list[str]:
    """The table's columns: rank, best mark, name, swept fields, results (the target metric
    among them), error."""
    results = list(RESULT_COLUMNS)
    if metric not in results:
        results.insert(results.index("wall_s"), metric)
    return ["rank", "best", "name", *fields, *results, "error"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return format_value(value).replace("|", "\\|")


def summary(
    rows: Sequence[dict[str, Any]], metric: str = DEFAULT_METRIC, mode: str = "auto"
) -> str:
    """One line: what the table is sorted by and which run is best."""
    direction = metric_mode(metric, mode)
    best = [row for row in rows if row.get("best")]
    head = f"Sorted by {metric} ({'lower' if direction == 'min' else 'higher'} is better)"
    if not best:
        return f"{head}; no run has logged it yet."
    names = ", ".join(row["name"] for row in best)
    return f"{head}; best (*): {names} with {metric} = {_cell(best[0][metric])}."


def markdown_table(
    fields: Sequence[str],
    rows: Sequence[dict[str, Any]],
    metric: str = DEFAULT_METRIC,
    mode: str = "auto",
) -> str:
    """The ranked results (`rank`'s rows) as a summary line and a Markdown table (numbers to
    4 significant digits)."""
    cols = columns(fields, metric)
    lines = [
        summary(rows, metric, mode),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    root: str,
    fields: Sequence[str],
    rows: Sequence[dict[str, Any]],
    metric: str = DEFAULT_METRIC,
    mode: str = "auto",
) -> list[str]:
    """`results.csv` (full precision), `results.md` and `results.png` in `root` for the
    ranked `rows`; their paths."""
    cols = [*columns(fields, metric), "workdir"]
    csv_path = os.path.join(root, "results.csv")
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else _csv_value(row[c]) for c in cols})
    md_path = os.path.join(root, "results.md")
    write_text(md_path, markdown_table(fields, rows, metric, mode))
    png_path = os.path.join(root, "results.png")
    plot_results(png_path, rows, metric)
    return [csv_path, md_path, png_path]


def _csv_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else format_value(value)


def plot_results(path: str, rows: Sequence[dict[str, Any]], metric: str = DEFAULT_METRIC) -> None:
    """Eval loss vs step per run (train loss dashed), and each run's final `metric` as bars
    in the rows' (ranked) order."""
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
    names = [("* " if row.get("best") else "") + row["name"] for row in rows]
    finals = [row.get(metric) if _finite(row.get(metric)) else math.nan for row in rows]
    bars.barh(range(len(rows)), finals, color=[f"C{i % 10}" for i in range(len(rows))])
    bars.set_yticks(range(len(rows)), names, fontsize=7)
    bars.invert_yaxis()
    for i, value in enumerate(finals):
        if not math.isnan(value):
            bars.text(value, i, f" {value:.4g}", va="center", fontsize=7)
    finite = [v for v in finals if not math.isnan(v)]
    if finite and min(finite) > 0:  # Zoomed in: runs of a sweep differ by a fraction.
        bars.set_xlim(0.95 * min(finite), 1.03 * max(finite))
    bars.set(xlabel=f"final {metric}", title=f"final {metric} per run (* best)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
