"""Training curves and a summary table of runs, read from their workdirs' `metrics.jsonl`.

    plot_curves(["/tmp/run_a", "/tmp/run_b"], "report.png")   # loss and accuracy vs step
    write_training_curves("/tmp/run_a")                        # /tmp/run_a/curves.png
    print(markdown_table(["/tmp/run_a", "/tmp/run_b"]))        # last train/eval metrics

Plots draw on matplotlib's Agg canvas directly (no pyplot, no display, no global backend).
Rates (accuracy, decoded accuracy / exact match / BLEU, MFU) are fractions in [0, 1] in every
sink, as logged; the panels plot them as they are.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from t5x_like import storage
from t5x_like.training.metrics_writer import read_metrics

DEFAULT_METRICS = ("loss", "accuracy")
# Decoded-text metrics (train.decode_batches): the ones a fine-tuning run is about, plotted
# next to the teacher-forced ones whenever the run computed them.
DECODED_METRICS = ("decode_accuracy", "decode_exact_match", "decode_bleu")
SPLITS = ("train", "eval")
# Pixels of one metric's panel at DPI: a figure with n metrics is (n * width) x height.
PANEL_SIZE = (5.0, 4.0)
DPI = 100


def load_run(workdir: str) -> dict[str, dict[int, dict[str, Any]]]:
    """split -> step -> the last record logged for it, from `<workdir>/metrics.jsonl` (or the
    `metrics/` chunks of an object-store workdir).

    Raises:
      FileNotFoundError: no metrics (not a training workdir, or nothing logged yet).
      ValueError: a line that is not JSON, or no train or eval record at all.
    """
    path = storage.join(workdir, storage.METRICS_FILE)
    try:
        run = {split: read_metrics(workdir, split) for split in SPLITS}
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{path} does not exist: pass the workdir of a training run (experiments/train.py "
            "writes metrics.jsonl there every train.log_every steps)."
        ) from e
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(
            f"{path} is not a metrics log of JSON lines with 'step' and 'split' ({e!r}); "
            "was it written by experiments/train.py?"
        ) from e
    if not any(run.values()):
        raise ValueError(
            f"{path} has no train or eval records yet: let the run log at least once "
            "(train.log_every / train.eval_every steps)."
        )
    return run


def run_label(workdir: str) -> str:
    """The run's name in legends and tables: its workdir's basename."""
    if storage.is_remote(workdir):
        return storage.basename(workdir) or workdir
    return os.path.basename(os.path.normpath(workdir)) or workdir


def _labels(workdirs: Sequence[str]) -> list[str]:
    labels = [run_label(w) for w in workdirs]
    # Two runs with the same basename (a/run, b/run) keep their whole paths apart.
    return [
        w if labels.count(label) > 1 else label for w, label in zip(workdirs, labels, strict=True)
    ]


def plot_curves(
    workdirs: Sequence[str],
    out_path: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    labels: Sequence[str] | None = None,
) -> str:
    """Writes a PNG of `metrics` vs step, train (solid) and eval (dashed), one color per run.

    One panel per metric, `PANEL_SIZE` inches at `DPI` each, side by side. Returns `out_path`.

    Raises:
      FileNotFoundError / ValueError: a workdir without usable metrics (see `load_run`), or a
        metric that no run logged.
    """
    if not workdirs:
        raise ValueError("plot_curves needs at least one workdir.")
    if not metrics:
        raise ValueError("plot_curves needs at least one metric, e.g. ('loss', 'accuracy').")
    runs = [load_run(w) for w in workdirs]
    labels = list(labels) if labels is not None else _labels(workdirs)
    width, height = PANEL_SIZE
    fig = Figure(figsize=(width * len(metrics), height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        drawn = 0
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            color = f"C{i % 10}"
            for split, style in (("train", "-"), ("eval", "--o")):
                points = [
                    (step, record[metric])
                    for step, record in run[split].items()
                    if isinstance(record.get(metric), (int, float))
                    and math.isfinite(record[metric])
                ]
                if points:
                    steps, values = zip(*points, strict=True)
                    ax.plot(
                        steps, values, style, color=color, markersize=3, label=f"{label} {split}"
                    )
                    drawn += 1
        if not drawn:
            logged = {k for run in runs for s in SPLITS for r in run[s].values() for k in r}
            logged = sorted(logged - {"step", "split", "time"})
            raise ValueError(f"No run logged metric {metric!r}; choose among {logged}.")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    # One whole object on an object store (closing the file uploads it).
    with storage.open_for_write(
        out_path if storage.is_remote(out_path) else os.path.abspath(out_path)
    ) as f:
        fig.savefig(f, format="png", dpi=DPI)
    return out_path


def run_metrics(workdir: str) -> tuple[str, ...]:
    """The metrics worth plotting for one run: loss, token accuracy, and the decoded-text
    metrics (`DECODED_METRICS`) its evals logged."""
    evals = load_run(workdir)["eval"].values()
    decoded = [m for m in DECODED_METRICS if any(m in record for record in evals)]
    return (*DEFAULT_METRICS, *decoded)


def write_training_curves(workdir: str, metrics: Sequence[str] | None = None) -> str:
    """Writes `<workdir>/curves.png` for one run (call on process 0 only); returns its path.

    `metrics`: None plots `run_metrics(workdir)` (decoded-text metrics included when logged).
    """
    metrics = run_metrics(workdir) if metrics is None else metrics
    return plot_curves([workdir], storage.join(workdir, "curves.png"), metrics)


def last_metrics(workdir: str) -> dict[str, tuple[int, dict[str, Any]] | None]:
    """split -> (step, record) of the last logged step, or None when the split never logged."""
    run = load_run(workdir)
    return {
        split: (max(run[split]), run[split][max(run[split])]) if run[split] else None
        for split in SPLITS
    }


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.4g}"


def markdown_table(workdirs: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """A Markdown table: one row per run, its last train and eval step and `metrics` there."""
    header = ["run", "train step", *(f"train {m}" for m in metrics)]
    header += ["eval step", *(f"eval {m}" for m in metrics)]
    rows = [header, ["---"] * len(header)]
    for workdir, label in zip(workdirs, _labels(workdirs), strict=True):
        row = [label]
        for last in last_metrics(workdir).values():
            step, record = last if last else (None, {})
            row += [_cell(step), *(_cell(record.get(m)) for m in metrics)]
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def members_figure(
    workdirs: Sequence[str],
    metrics: Sequence[str] = ("loss",),
    split: str = "eval",
    labels: Sequence[str] | None = None,
    highlight: Sequence[str] = (),
) -> tuple[Figure, list[str]]:
    """A figure comparing many runs (a sweep's members): one panel per metric, one line per
    run of its `split` values vs step, the runs named in `highlight` (labels) drawn thick.

    Returns the figure and the labels of the runs left out for having no `split` records
    (not started, failed before logging).

    Raises:
      ValueError: no run logged any of `metrics` on `split`.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {SPLITS}.")
    if not metrics:
        raise ValueError("members_figure needs at least one metric, e.g. ('loss',).")
    labels = list(labels) if labels is not None else _labels(workdirs)
    runs, skipped = [], []
    for workdir, label in zip(workdirs, labels, strict=True):
        try:
            records = load_run(workdir)[split]
        except (FileNotFoundError, ValueError):
            records = {}
        if records:
            runs.append((label, records))
        else:
            skipped.append(label)
    width, height = PANEL_SIZE
    fig = Figure(figsize=(width * len(metrics) * 1.3, height * 1.2), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for i, (label, records) in enumerate(runs):
            points = [
                (step, r[metric])
                for step, r in records.items()
                if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])
            ]
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            best = label in highlight
            ax.plot(
                steps,
                values,
                "o-" if split == "eval" else "-",
                color=f"C{i % 10}",
                linewidth=2.8 if best else 1.2,
                markersize=3,
                label=f"{label} (best)" if best else label,
                zorder=3 if best else 2,
            )
        if not ax.get_lines():
            raise ValueError(
                f"No run logged {split} {metric!r}: choose another metric or split (the "
                "train split has a record every train.log_every steps)."
            )
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{split} {metric}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig, skipped


def plot_members(
    workdirs: Sequence[str],
    out_path: str,
    metrics: Sequence[str] = ("loss",),
    split: str = "eval",
    labels: Sequence[str] | None = None,
    highlight: Sequence[str] = (),
) -> list[str]:
    """Writes `members_figure` as a PNG at `out_path`; returns the labels of runs left out."""
    fig, skipped = members_figure(workdirs, metrics, split, labels, highlight)
    with storage.open_for_write(storage.resolve(out_path)) as f:  # A sweep on a bucket too.
        fig.savefig(f, format="png", dpi=DPI)
    return skipped
