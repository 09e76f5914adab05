r"""Plots training curves of one or more runs and prints their last metrics as a Markdown table.

  python experiments/report.py --workdirs=/tmp/run          # writes /tmp/run/curves.png
  python experiments/report.py --workdirs=/tmp/a,/tmp/b --out=report.png
  python experiments/report.py --workdirs=/tmp/a --workdirs=/tmp/b --out=report.png \
      --metrics=loss,perplexity

Reads each workdir's metrics.jsonl (written by experiments/train.py): one panel per metric with
train (solid) and eval (dashed) values vs step, one color per run, labelled by the workdir's
name. The table has each run's last logged train and eval step and the metrics there.
"""

import sys

from absl import app, flags

from t5x_like.cli import main_with_clear_errors, parse_flags
from t5x_like.tools import plotting

_WORKDIRS = flags.DEFINE_multi_string(
    "workdirs",
    [],
    "Training workdirs to compare: comma-separated, or repeat the flag (required).",
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdirs = [w for value in _WORKDIRS.value for w in value.split(",") if w]
    if not workdirs:
        raise app.UsageError("Pass --workdirs=<workdir>[,<workdir>...].")
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
