r"""Runs an ablation sweep: one experiments/train.py run per combination of config values.

  python experiments/sweep.py --workdir=/tmp/sweep --config=configs/decoder_only.py \
      --override=train.steps=100 \
      --sweep='model.num_layers=1,2;optimizer.learning_rate=3e-3,1e-3'        # 4 runs (grid)
  python experiments/sweep.py --workdir=/tmp/sweep2 --config=configs/t5.py:small \
      --sweep_zip='model.d_model=256,512;model.mlp_dim=1024,2048' \
      --sweep='optimizer.learning_rate=1e-3,3e-4'      # 2 (paired) x 2 (grid) = 4 runs
  python experiments/sweep.py --workdir=/tmp/sweep --collect_only   # rebuild table and plot

Sweep syntax: `<section>.<field>=v1,v2,...`, axes separated by ';'. Commas inside brackets or
quotes belong to one value (`model.x=(1,2),(3,4)`, `data.inputs_prefix='a, b',c`); values are
parsed as train.py's `--config.<field>=value` parses them (by the field's type: int, float, bool
as true/false, string, tuple). `--sweep` axes are crossed (cartesian product); the axes of one
`--sweep_zip` are paired (i-th value with i-th value, equal lengths) and cross with the rest as
one axis. Both flags may be repeated. Base overrides for every run: `--override=field=value`
(repeatable) or train.py's own `--config.<field>=value` (with the `=`).

Every run's config is built and validated before anything starts; an unknown field or a value of
the wrong type is an error naming the field. Run `<name>` lives in `<workdir>/<name>` (e.g.
`num_layers=2+learning_rate=0.001`: no commas or other characters a shell or report.py's
`--workdirs=a,b` would split), described in `<workdir>/sweep.json`.

--launch=local (default) runs them one after another as child processes (output in
`<run>/train.log`), skipping runs already finished (a train record and a checkpoint at
train.steps), then writes `results.csv`, `results.md` and `results.png` into --workdir and prints
the table; the exit code is 1 if a run failed. The table is sorted by --metric (default
eval_loss; lower is better for losses and perplexities, higher for accuracies, BLEU, MFU and
tokens/s, or as --metric_mode says), the best run marked `*`, with each run's swept values,
status, final step, parameter count, tokens/s, final metrics and, for a failed run, the line of
its train.log saying why. `experiments/report.py --sweep=<workdir>` plots every run's curves in
one figure. --launch=print prints each run's command, one
shell-quoted line each; --launch=script writes `launch.sh` (`bash launch.sh [I]`) and a SLURM array
script `sweep.sbatch`; neither runs anything. Every mode writes `<workdir>/sweep.json` (the spec
and each run's name, workdir, values and command), which --collect_only reads.
"""

import os
import re
import shlex
import sys
from typing import Any

from absl import app, flags, logging

from t5x_like import cli
from t5x_like.errors import ConfigError
from t5x_like.log_setup import setup_logging
from t5x_like.tools import sweep

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Sweep root: one workdir per run under it, plus sweep.json and results."
)
flags.mark_flag_as_required("workdir")
_CONFIG = flags.DEFINE_string(
    "config",
    os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "configs", "decoder_only.py")),
    "Base config file, as train.py's --config (configs/x.py or configs/x.py:arg).",
)
_OVERRIDE = flags.DEFINE_multi_string(
    "override",
    [],
    "Base override for every run, <section>.<field>=value (repeatable); "
    "--config.<section>.<field>=value works too.",
)
_SWEEP = flags.DEFINE_multi_string(
    "sweep",
    [],
    "Grid axes: 'a.b=1,2;c.d=x,y' crosses every value of each axis (repeatable).",
)
_SWEEP_ZIP = flags.DEFINE_multi_string(
    "sweep_zip",
    [],
    "Paired axes: 'a.b=1,2;c.d=x,y' gives (1,x) and (2,y); crossed with the other axes as "
    "one axis (repeatable: each flag is one group).",
)
_LAUNCH = flags.DEFINE_enum(
    "launch",
    "local",
    ["local", "print", "script"],
    "local: run one after another here; print: print the commands; script: write launch.sh "
    "and sweep.sbatch (SLURM array).",
)
_COLLECT_ONLY = flags.DEFINE_bool(
    "collect_only", False, "Only rebuild results.csv/md/png from the runs in <workdir>/sweep.json."
)
_DEVICE_COUNT = flags.DEFINE_integer(
    "device_count",
    None,
    "Devices each run will have, to check meshes against (default: this machine's with "
    "--launch=local, else the smallest mesh each config fits).",
)
_PYTHON = flags.DEFINE_string(
    "python", sys.executable, "Python interpreter written into the runs' commands."
)
_RUN_TIMEOUT = flags.DEFINE_float(
    "run_timeout", None, "Seconds after which a local run is stopped and marked failed."
)
_METRIC = flags.DEFINE_string(
    "metric",
    None,
    "Target metric the results are sorted by: eval_<key> or train_<key> of the runs' last "
    "logged records (eval_loss, eval_accuracy, eval_decode_bleu, train_loss, ...), "
    "tokens_per_sec or params. Default: the one recorded in sweep.json, else eval_loss.",
)
_METRIC_MODE = flags.DEFINE_enum(
    "metric_mode",
    None,
    ["auto", "min", "max"],
    "Whether lower (min) or higher (max) --metric is better; auto: by its name (losses and "
    "perplexities min, accuracies/BLEU/MFU/throughput max). Default: recorded, else auto.",
)

_PASSTHROUGH = re.compile(r"^--?config\.")
_passthrough_overrides: list[str] = []


def _parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with train.py-style `--config.<field>=value` kept as base overrides;
    --help_config and --print_config (the base config, overrides applied) print and exit."""
    _passthrough_overrides.extend(a.lstrip("-") for a in argv[1:] if _PASSTHROUGH.match(a))
    rest = [a for a in argv if not _PASSTHROUGH.match(a)]
    cli.config_actions(argv, lambda: _base_config(rest), argv[0])
    return app.parse_flags_with_usage(rest)


def _base_config(argv: list[str]) -> Any:
    """The config every run starts from: --config with the base overrides."""
    flags.FLAGS(argv, known_only=True)
    overrides = [sweep.parse_override(o) for o in [*_OVERRIDE.value, *_passthrough_overrides]]
    return sweep.load_config(_CONFIG.value, overrides)[0]


def _target_metric(root: str | None = None) -> tuple[str, str]:
    """(metric, mode): the flags, else what `root`'s sweep.json recorded, else the defaults."""
    recorded = sweep.load_sweep_metric(root) if root else None
    metric, mode = recorded or (sweep.DEFAULT_METRIC, "auto")
    metric, mode = _METRIC.value or metric, _METRIC_MODE.value or mode
    if not re.fullmatch(r"(eval|train)_\w+|tokens_per_sec|params|wall_s", metric):
        raise ConfigError(
            f"--metric={metric} is not a result column: use eval_<key> or train_<key> of the "
            "runs' metrics (eval_loss, eval_accuracy, train_loss, ...), tokens_per_sec or params."
        )
    return metric, mode


def _collect(root: str, metric: str, mode: str) -> list[dict]:
    fields, runs = sweep.load_sweep_json(root)
    rows = sweep.rank(sweep.collect(fields, runs), metric, mode)
    paths = sweep.write_results(root, fields, rows, metric, mode)
    print(sweep.markdown_table(fields, rows, metric, mode), end="")
    logging.info("Results: %s", ", ".join(paths))
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    setup_logging()
    root = _WORKDIR.value
    try:
        if _COLLECT_ONLY.value:
            _collect(root, *_target_metric(root))
            return
        metric = _target_metric(root)
        spec = sweep.SweepSpec(
            config=_CONFIG.value,
            overrides=[*_OVERRIDE.value, *_passthrough_overrides],
            sweep=list(_SWEEP.value),
            sweep_zip=list(_SWEEP_ZIP.value),
        )
        devices = _DEVICE_COUNT.value
        if devices is None and _LAUNCH.value == "local":
            devices = sweep.local_device_count()
        fields, runs = sweep.plan(spec, root, device_count=devices, python=_PYTHON.value)
    except (FileNotFoundError, ConfigError) as e:
        sys.exit(f"Error: {e}")
    path = sweep.write_sweep_json(root, spec, fields, runs, metric)
    logging.info("Sweep of %d runs over %s: %s", len(runs), ", ".join(fields), path)

    if _LAUNCH.value == "print":
        for run in runs:
            print(shlex.join(run.command))
        return
    if _LAUNCH.value == "script":
        launch, sbatch = sweep.write_scripts(root, runs)
        print(f"Wrote {launch} (bash {launch} [I]) and {sbatch} (sbatch {sbatch}).")
        return
    outcome = sweep.launch_local(runs, timeout_s=_RUN_TIMEOUT.value)
    try:
        _collect(root, *metric)
    except ConfigError as e:
        sys.exit(f"Error: {e}")
    unfinished = {
        result: [name for name, r in outcome.items() if r == result]
        for result in ("failed", "stopped")
    }
    if any(unfinished.values()):
        sys.exit(
            "Not every run finished: "
            + "; ".join(
                f"{len(names)} of {len(runs)} runs {result}: {', '.join(names)}"
                for result, names in unfinished.items()
                if names
            )
            + ". Relaunch the same command to resume them."
        )


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
