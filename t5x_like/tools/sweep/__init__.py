"""Ablation sweeps: a base config times a grid (or zipped lists) of field values, one run each.

    spec.py     the sweep spec parsed and expanded, every run's config built, validated and
                named, and `<root>/sweep.json` (what the sweep is)
    launch.py   running the runs here one after another, or writing launch.sh and a SLURM array
                script; finished-run detection
    results.py  each run's status, size, speed, final metrics and error, ranked by the target
                metric (best marked): results.csv, results.md, results.png
    files.py    atomic writes, JSON reads and the tolerant metrics.jsonl reader they share

experiments/sweep.py is the command line; the names below are its API.
"""

from t5x_like.tools.sweep.launch import (
    RUN_RECORD,
    finished_step,
    launch_local,
    run_one,
    write_scripts,
)
from t5x_like.tools.sweep.results import (
    DEFAULT_METRIC,
    RESULT_COLUMNS,
    collect,
    last_error,
    markdown_table,
    metric_mode,
    plot_results,
    rank,
    run_status,
    write_results,
)
from t5x_like.tools.sweep.spec import (
    MAX_NAME_LEN,
    NAME_SEPARATOR,
    REPO,
    SWEEP_JSON,
    TRAIN_SCRIPT,
    Axis,
    Run,
    SweepSpec,
    expand,
    format_value,
    load_config,
    load_sweep_json,
    load_sweep_metric,
    local_device_count,
    parse_axes,
    parse_override,
    plan,
    run_names,
    split_top_level,
    write_sweep_json,
)

__all__ = [
    "DEFAULT_METRIC",
    "MAX_NAME_LEN",
    "NAME_SEPARATOR",
    "REPO",
    "RESULT_COLUMNS",
    "RUN_RECORD",
    "SWEEP_JSON",
    "TRAIN_SCRIPT",
    "Axis",
    "Run",
    "SweepSpec",
    "collect",
    "expand",
    "finished_step",
    "format_value",
    "last_error",
    "launch_local",
    "load_config",
    "load_sweep_json",
    "load_sweep_metric",
    "local_device_count",
    "markdown_table",
    "metric_mode",
    "parse_axes",
    "parse_override",
    "plan",
    "plot_results",
    "rank",
    "run_names",
    "run_one",
    "run_status",
    "split_top_level",
    "write_results",
    "write_scripts",
    "write_sweep_json",
]
