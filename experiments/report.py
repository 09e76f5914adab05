r"""Plots training curves of one or more runs and prints their last metrics as a Markdown table.

  python experiments/report.py --workdirs=/tmp/run          # writes /tmp/run/curves.png
  python experiments/report.py --workdirs=/tmp/a,/tmp/b --out=report.png
  python experiments/report.py --workdirs=/tmp/a --workdirs=/tmp/b --out=report.png \
      --metrics=loss,perplexity
  python experiments/report.py --sweep=sweeps/depth_lr        # writes sweeps/depth_lr/curves.png

Reads each workdir's metrics.jsonl (written by experiments/train.py): one panel per metric with
train (solid) and eval (dashed) values vs step, one color per run, labelled by the workdir's
name. The table has each run's last logged train and eval step and the metrics there.

`--sweep=DIR` reads an experiments/sweep.py root instead: it prints the sweep's results table
(sorted by its target metric, best marked `*`, failed runs with their error) and draws every
member's curves in one figure, one line per member per panel (`--split`, eval by default), the
best member thickest, labelled by run name.
"""

import sys

from absl import app, flags

from t5x_like.cli import main_with_clear_errors, parse_flags
from t5x_like.errors import ConfigError
from t5x_like.tools import plotting, sweep

_WORKDIRS = flags.DEFINE_multi_string(
    "workdirs",
    [],
    "Training workdirs to compare: comma-separated, or repeat the flag (or pass --sweep).",
)
_OUT = flags.DEFINE_string(
    "out",
    None,
    "Path of the PNG to write; default: <workdir>/curves.png when one workdir is given "
    "(required with several).",
)
_METRICS = flags.DEFINE_list(
    "metrics",
    list(plotting.DEFAULT_METRICS),
    "Comma-separated metrics of metrics.jsonl to plot and tabulate (e.g. loss,accuracy,"
    "perplexity,grad_norm,learning_rate).",
)


_SWEEP = flags.DEFINE_string(
    "sweep",
    None,
    "An experiments/sweep.py root: print its ranked results and plot all its members' curves "
    "in one figure (default --out: <sweep>/curves.png). Excludes --workdirs.",
)
_SPLIT = flags.DEFINE_enum(
    "split", "eval", list(plotting.SPLITS), "--sweep: which split's curves to draw."
)


def _report_sweep(root: str, out: str | None) -> None:
    """The sweep's results table and its members' curves in one figure."""
    fields, runs = sweep.load_sweep_json(root)
    metric, mode = sweep.load_sweep_metric(root) or (sweep.DEFAULT_METRIC, "auto")
    rows = sweep.rank(sweep.collect(fields, runs), metric, mode)
    print(sweep.markdown_table(fields, rows, metric, mode))
    out = out or f"{root.rstrip('/')}/curves.png"
    skipped = plotting.plot_members(
        [run.workdir for run in runs],
        out,
        _METRICS.value,
        _SPLIT.value,
        labels=[run.name for run in runs],
        highlight=[row["name"] for row in rows if row["best"]],
    )
    if skipped:
        print(f"No {_SPLIT.value} curves (nothing logged): {', '.join(skipped)}")
    print(f"\nWrote {out}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _SWEEP.value:
        if _WORKDIRS.value:
            raise app.UsageError("Pass either --sweep=<dir> or --workdirs=..., not both.")
        try:
            _report_sweep(_SWEEP.value, _OUT.value)
        except (FileNotFoundError, ValueError, ConfigError) as e:
            sys.exit(f"Error: {e}")
        return
    workdirs = [w for value in _WORKDIRS.value for w in value.split(",") if w]
    if not workdirs:
        raise app.UsageError("Pass --workdirs=<workdir>[,<workdir>...] or --sweep=<dir>.")
    out = _OUT.value
    if out is None:
        if len(workdirs) > 1:
            raise app.UsageError("Pass --out=<file.png> when comparing several workdirs.")
        out = f"{workdirs[0].rstrip('/')}/curves.png"
    try:
        print(plotting.markdown_table(workdirs, _METRICS.value))
        plotting.plot_curves(workdirs, out, _METRICS.value)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"Error: {e}")
    print(f"\nWrote {out}")


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=parse_flags)
