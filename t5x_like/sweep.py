"""Ablation sweeps: a base config times a grid (or zipped lists) of field values, one run each.

A sweep spec names config fields and their values, e.g.

    model.num_layers=2,4;optimizer.learning_rate=1e-3,3e-4

(';' separates axes, ',' separates values; commas inside brackets or quotes belong to the value,
so tuples like `(1,2)` work). Grid axes are crossed (cartesian product); a zipped group pairs its
axes' i-th values and counts as one axis of the product. Values are parsed exactly as
experiments/train.py parses `--config.<field>=value` (ml_collections, by the field's type), and
every run's config is built and validated before anything is launched.

Each run gets a workdir `<root>/<name>` named after its swept values (`num_layers=2,
learning_rate=0.001`), a launch command for experiments/train.py, and a row in the results table
(`results.csv`, `results.md`) and plot (`results.png`) collected from its metrics.jsonl.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import flags, logging
from ml_collections import config_dict

from t5x_like import cli
from t5x_like.config import ConfigError, validate_config

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
TRAIN_SCRIPT = os.path.join(REPO, "experiments", "train.py")
SWEEP_JSON = "sweep.json"
RUN_RECORD = "sweep_run.json"  # Per-run launch history written by `launch_local`.
MAX_NAME_LEN = 80
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")
_OPENERS, _CLOSERS = "([{", ")]}"


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept field and its values as written on the command line."""

    path: str
    values: tuple[str, ...]


@dataclasses.dataclass
class Run:
    """One run of a sweep: its swept values, workdir and train.py command."""

    name: str
    workdir: str
    overrides: dict[str, Any]  # Swept field -> parsed value (as the config holds it).
    raw_overrides: dict[str, str]  # Swept field -> text passed to train.py.
    command: list[str]
    steps: int  # train.steps of the run's config: the step a finished run reached.

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["overrides"] = {k: _jsonable(v) for k, v in self.overrides.items()}
        out["command_line"] = shlex.join(self.command)
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Run:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in fields})


# --------------------------------------------------------------------------- spec parsing


def split_top_level(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets and quotes, each part stripped."""
    parts, current, depth, quote = [], [], 0, None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        elif char == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if quote or depth:
        raise ConfigError(f"Unbalanced brackets or quotes in sweep spec {text!r}.")
    parts.append("".join(current).strip())
    return parts


def _unquote(value: str) -> str:
    """A value written as one quoted string literal ('a,b') loses its quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            parsed = ast.literal_eval(value)
        except (SyntaxError, ValueError):
            return value
        if isinstance(parsed, str):
            return parsed
    return value


def parse_axes(spec: str) -> list[Axis]:
    """`'a.b=1,2;c.d=x'` -> [Axis('a.b', ('1', '2')), Axis('c.d', ('x',))].

    Raises:
      ConfigError: for an axis without `=`, a field without a name, or an empty value.
    """
    axes = []
    for part in split_top_level(spec, ";"):
        if not part:
            continue  # A trailing ';' is harmless.
        field, eq, values = part.partition("=")
        field = field.strip()
        field = field[len("config.") :] if field.startswith("config.") else field
        if not eq or not field:
            raise ConfigError(
                f"Sweep axis {part!r} is not of the form <section>.<field>=v1,v2,... "
                "(e.g. 'model.num_layers=2,4'; ';' separates axes)."
            )
        raw = split_top_level(values, ",")
        if any(not v for v in raw):
            raise ConfigError(f"Sweep axis {part!r} has an empty value for {field!r}.")
        axes.append(Axis(field, tuple(_unquote(v) for v in raw)))
    return axes


def parse_override(text: str) -> tuple[str, str]:
    """`'train.steps=50'` (or `'config.train.steps=50'`) -> ('train.steps', '50')."""
    field, eq, value = text.partition("=")
    field = field.strip().lstrip("-")
    field = field[len("config.") :] if field.startswith("config.") else field
    if not eq or not field:
        raise ConfigError(f"Override {text!r} is not of the form <section>.<field>=value.")
    return field, value


def expand(grid: Sequence[str], zipped: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The swept fields and one {field: raw value} per run.

    Every axis of every `grid` spec is crossed with the others; each `zipped` spec pairs its
    axes (all must have as many values) and is crossed with the rest as a single axis. The
    first axis varies slowest.

    Raises:
      ConfigError: when nothing is swept, a field is swept twice, zipped axes differ in length,
        or two runs would be identical.
    """
    groups: list[list[dict[str, str]]] = []
    fields: list[str] = []
    for spec in grid:
        for axis in parse_axes(spec):
            fields.append(axis.path)
            groups.append([{axis.path: v} for v in axis.values])
    for spec in zipped:
        axes = parse_axes(spec)
        if not axes:
            continue
        lengths = {axis.path: len(axis.values) for axis in axes}
        if len(set(lengths.values())) != 1:
            raise ConfigError(
                f"Zipped axes must have as many values each, got {lengths} in {spec!r}: give "
                "every field of a --sweep_zip group the same number of values."
            )
        fields.extend(axis.path for axis in axes)
        groups.append([{a.path: a.values[i] for a in axes} for i in range(len(axes[0].values))])
    if not groups:
        raise ConfigError("Nothing to sweep: give --sweep and/or --sweep_zip.")
    repeated = sorted({f for f in fields if fields.count(f) > 1})
    if repeated:
        raise ConfigError(f"Field(s) {repeated} are swept more than once; sweep each once.")
    runs = [
        {k: v for part in combo for k, v in part.items()} for combo in itertools.product(*groups)
    ]
    seen: set[tuple[tuple[str, str], ...]] = set()
    for run in runs:
        key = tuple(sorted(run.items()))
        if key in seen:
            raise ConfigError(f"The sweep repeats the run {dict(key)}; drop the duplicate value.")
        seen.add(key)
    return fields, runs


# --------------------------------------------------------------------------- configs


def _check_field(cfg: Any, path: str, where: str, config_file: str) -> None:
    """Raises ConfigError naming `path` (and close matches) when the config has no such field."""
    parts = path.split(".")
    node = cfg
    for i, part in enumerate(parts):
        keys = list(node.keys()) if isinstance(node, config_dict.ConfigDict) else []
        if part not in keys:
            prefix = ".".join(parts[:i])
            close = difflib.get_close_matches(part, keys, n=3)
            hint = f" Did you mean {', '.join(repr(f'{prefix}.{c}'.lstrip('.')) for c in close)}?"
            raise ConfigError(
                f"{where}: unknown config field {path!r}: {config_file} has no "
                f"{part!r} in {prefix or 'the top level'}.{hint if close else ''} Fix the field "
                "name (fields are <section>.<field>, as in --config.<section>.<field>)."
            )
        node = node[part]


def load_config(config_file: str, overrides: Sequence[tuple[str, str]]) -> tuple[Any, dict]:
    """The config `config_file` (`path[:arg]`) with `overrides` applied, as train.py builds it.

    Returns the ConfigDict and {field: parsed value}. Parses with train.py's own flag code
    (`t5x_like.cli`), so a value means here exactly what it means on train.py's command line.

    Raises:
      ConfigError: naming the field whose value does not parse as the field's type.
    """
    argv = ["train.py", f"--config={config_file}"]
    argv += [f"--config.{field}={value}" for field, value in overrides]
    values = flags.FlagValues()
    try:
        holder, _ = cli.define_and_parse(argv, None, "", flag_values=values)
        cfg = holder.value
    except (flags.Error, OSError) as e:  # ConfigError (a bad override) passes through.
        raise ConfigError(
            f"Cannot load --config={config_file}: {e}. Check the file path and its ':arg'."
        ) from e
    if not isinstance(cfg, config_dict.ConfigDict):
        path = config_file.partition(":")[0]
        if not os.path.isfile(path):
            raise ConfigError(f"--config={config_file}: {path} does not exist; fix the path.")
        raise ConfigError(f"--config={config_file}: get_config() did not return a ConfigDict.")
    return cfg, dict(values["config"].override_values)


def _smallest_device_count(cfg: Any) -> int:
    """Devices of the smallest mesh `cfg.mesh` fits (a -1 axis taken as 1)."""
    try:
        return math.prod(max(int(cfg.mesh[a]), 1) for a in ("data", "fsdp", "tensor"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return 1


def local_device_count(timeout_s: float = 180.0) -> int | None:
    """This machine's JAX device count, asked in a child process (so that this process keeps
    no accelerator memory the runs need); None if that fails."""
    command = [sys.executable, "-c", "import jax; print(jax.device_count())"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        logging.warning("Could not count this machine's devices; checking meshes without it.")
        return None


# --------------------------------------------------------------------------- naming


def format_value(value: Any) -> str:
    """A short, exact text for a swept value (floats keep repr: 0.001, 1e-05)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return repr(tuple(value)).replace(" ", "")
    return str(value)


def _short_hash(obj: Any) -> str:
    text = json.dumps(_jsonable(obj), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_names(fields: Sequence[str], runs: Sequence[dict[str, Any]]) -> list[str]:
    """Unique, deterministic, filesystem-safe names, e.g. `num_layers=2,learning_rate=0.001`.

    A field is named by its last component unless two swept fields share it. Characters other
    than letters, digits and `._,=+-` become `_`; names longer than MAX_NAME_LEN, and names that
    collide once made safe, end in a hash of their values.
    """
    leaves = [f.rsplit(".", 1)[-1] for f in fields]
    labels = {
        f: (leaf if leaves.count(leaf) == 1 else f) for f, leaf in zip(fields, leaves, strict=True)
    }
    names = []
    for run in runs:
        name = ",".join(f"{labels[f]}={format_value(run[f])}" for f in fields)
        name = _NAME_UNSAFE.sub("_", name)
        if len(name) > MAX_NAME_LEN:
            name = f"{name[: MAX_NAME_LEN - 9]}-{_short_hash(run)}"
        names.append(name)
    clashing = {name for name in names if names.count(name) > 1}
    for i, name in enumerate(names):
        if name in clashing or name.startswith("."):
            names[i] = f"{name[: MAX_NAME_LEN - 9]}-{_short_hash(runs[i])}"
    if len(set(names)) != len(names):  # Only a hash collision could get here.
        raise ConfigError(f"Run names are not unique: {names}.")
    return names


# --------------------------------------------------------------------------- planning


@dataclasses.dataclass
class SweepSpec:
    """What a sweep is: a base config and overrides, and what varies."""

    config: str  # configs/x.py[:arg], as train.py's --config.
    overrides: list[str] = dataclasses.field(default_factory=list)  # "field=value" for all runs.
    sweep: list[str] = dataclasses.field(default_factory=list)  # Grid specs.
    sweep_zip: list[str] = dataclasses.field(default_factory=list)  # Zipped specs.


def _absolute_config(config_file: str) -> str:
    path, colon, arg = config_file.partition(":")
    return os.path.abspath(os.path.expanduser(path)) + colon + arg


def plan(
    spec: SweepSpec,
    root: str,
    *,
    device_count: int | None = None,
    python: str = sys.executable,
    train_script: str = TRAIN_SCRIPT,
) -> tuple[list[str], list[Run]]:
    """Expands, builds and validates every run of `spec`; nothing is written or launched.

    `device_count`: the devices each run will have (None: check each config against the
    smallest mesh it fits).

    Raises:
      ConfigError: naming the field for a bad spec, an unknown field, a value that does not
        parse, or a config that `validate_config` rejects (with the run it belongs to).
    """
    config_file = _absolute_config(spec.config)
    base = [parse_override(o) for o in spec.overrides]
    fields, raw_runs = expand(spec.sweep, spec.sweep_zip)
    base_cfg, _ = load_config(config_file, [])
    for field, _ in base:
        _check_field(base_cfg, field, "--override", spec.config)
    for field in fields:
        _check_field(base_cfg, field, "--sweep", spec.config)
    both = sorted(set(fields) & {field for field, _ in base})
    if both:
        raise ConfigError(f"{both} are both overridden and swept; drop them from --override.")

    root = os.path.abspath(os.path.expanduser(root))
    built = []
    for raw in raw_runs:
        cfg, parsed = load_config(config_file, [*base, *raw.items()])
        built.append((cfg, {f: parsed[f] for f in fields}, raw))
    names = run_names(fields, [swept for _, swept, _ in built])
    runs = []
    for name, (cfg, swept, raw) in zip(names, built, strict=True):
        devices = device_count or _smallest_device_count(cfg)
        try:
            validate_config(cfg, devices)
        except ConfigError as e:
            raise ConfigError(f"Run {name} ({raw}) has an invalid config: {e}") from e
        workdir = os.path.join(root, name)
        command = [python, train_script, f"--config={config_file}", f"--workdir={workdir}"]
        command += [f"--config.{f}={v}" for f, v in [*base, *raw.items()]]
        runs.append(Run(name, workdir, swept, dict(raw), command, int(cfg.train.steps)))
    return fields, runs


def write_sweep_json(root: str, spec: SweepSpec, fields: Sequence[str], runs: Sequence[Run]) -> str:
    """`<root>/sweep.json`: the spec, the swept fields and every run (name, workdir, command)."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, SWEEP_JSON)
    previous = _load_json(path)
    if previous and previous.get("spec") != dataclasses.asdict(spec):
        kept = {r["name"] for r in previous.get("runs", [])} - {r.name for r in runs}
        logging.warning(
            "%s described another sweep (%s); replacing it.%s",
            path,
            previous.get("spec"),
            f" Runs no longer in it stay on disk: {sorted(kept)}" if kept else "",
        )
    record = {
        "spec": dataclasses.asdict(spec),
        "fields": list(fields),
        "runs": [run.to_json() for run in runs],
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(path, record)
    return path


def load_sweep_json(root: str) -> tuple[list[str], list[Run]]:
    """The swept fields and runs recorded in `<root>/sweep.json`."""
    path = os.path.join(os.path.abspath(os.path.expanduser(root)), SWEEP_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: {root!r} is not a sweep root. Launch a sweep there first "
            "(experiments/sweep.py --workdir=<root> --sweep=...)."
        )
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    return record["fields"], [Run.from_json(r) for r in record["runs"]]


# --------------------------------------------------------------------------- launching


def _read_jsonl(path: str) -> dict[str, dict[int, dict[str, Any]]]:
    """{split: {step: last record}} of a metrics.jsonl ({} if missing; torn lines skipped).

    Same rule as training.metrics_writer.read_metrics (later lines win), all splits in one read.
    """
    out: dict[str, dict[int, dict[str, Any]]] = {}
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # A line cut short by a killed run.
            out.setdefault(record["split"], {})[int(record["step"])] = record
    return {split: dict(sorted(steps.items())) for split, steps in out.items()}


def finished_step(run: Run) -> int | None:
    """`run.steps` when the run logged a train record and saved a checkpoint at that step."""
    metrics = _read_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
    logged = run.steps in metrics.get("train", {})
    saved = os.path.isdir(os.path.join(run.workdir, "checkpoints", str(run.steps)))
    return run.steps if logged and saved else None


class _Terminated(Exception):
    """SIGTERM reached the sweep while a run was going."""


def _stop(process: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM (the trainer may save on it), then SIGKILL after `grace_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_one(run: Run, timeout_s: float | None = None) -> dict[str, Any]:
    """Runs `run.command` as a child process, its output appended to `<workdir>/train.log`.

    Returns this launch's record (returncode, wall_s), also appended to `<workdir>/sweep_run.json`.
    A SIGTERM or Ctrl-C to the sweep is passed on to the run before the sweep stops.
    """
    os.makedirs(run.workdir, exist_ok=True)
    started = time.time()
    with open(os.path.join(run.workdir, "train.log"), "a", encoding="utf-8") as log:
        log.write(f"=== sweep launch {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: ")
        log.write(shlex.join(run.command) + "\n")
        log.flush()
        process = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            returncode = -signal.SIGKILL if process.returncode is None else process.returncode
            log.write(f"=== sweep: run timed out after {timeout_s}s\n")
        except BaseException:
            _stop(process)
            raise
    launch = {"started": started, "wall_s": time.time() - started, "returncode": returncode}
    record_path = os.path.join(run.workdir, RUN_RECORD)
    record = _load_json(record_path) or {"launches": []}
    record["launches"].append(launch)
    _write_json(record_path, record)
    return launch


def launch_local(runs: Sequence[Run], timeout_s: float | None = None) -> dict[str, str]:
    """Runs the unfinished runs one after another; returns {name: skipped|ok|failed}."""
    outcome = {}
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGTERM, _on_term)
    try:
        for i, run in enumerate(runs):
            done = finished_step(run)
            if done is not None:
                logging.info("skipping %s: finished at step %d", run.name, done)
                outcome[run.name] = "skipped"
                continue
            logging.info(
                "[%d/%d] launching %s: %s", i + 1, len(runs), run.name, shlex.join(run.command)
            )
            launch = run_one(run, timeout_s)
            ok = launch["returncode"] == 0
            outcome[run.name] = "ok" if ok else "failed"
            log = os.path.join(run.workdir, "train.log")
            if ok:
                logging.info("%s finished in %.1fs.", run.name, launch["wall_s"])
            else:
                logging.error(
                    "%s failed (exit %s) after %.1fs; see %s",
                    run.name,
                    launch["returncode"],
                    launch["wall_s"],
                    log,
                )
    except _Terminated:
        logging.error("Sweep terminated (SIGTERM); the current run was stopped.")
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return outcome


def write_scripts(root: str, runs: Sequence[Run]) -> tuple[str, str]:
    """`<root>/launch.sh` (all runs in turn, or only run I with `bash launch.sh I`) and
    `<root>/sweep.sbatch` (a SLURM array whose task I runs line I). Nothing is run."""
    os.makedirs(root, exist_ok=True)
    launch = os.path.join(root, "launch.sh")
    lines = [
        "#!/usr/bin/env bash",
        f"# Sweep of {len(runs)} runs. `bash launch.sh` runs them one after another; "
        "`bash launch.sh I` runs only run I (0-based), as sweep.sbatch's array task I does.",
        "# Each run's output goes to <its workdir>/train.log. A rerun resumes from the last "
        "checkpoint.",
        "set -u",
        "run() {",
        '  case "$1" in',
    ]
    for i, run in enumerate(runs):
        log = shlex.quote(os.path.join(run.workdir, "train.log"))
        lines.append(
            f"    {i}) mkdir -p {shlex.quote(run.workdir)} && {shlex.join(run.command)} "
            f">> {log} 2>&1 ;;"
        )
    lines += [
        '    *) echo "no run $1 (0..' + str(len(runs) - 1) + ')" >&2; return 2 ;;',
        "  esac",
        "}",
        'if [[ $# -gt 0 ]]; then run "$1"; exit $?; fi',
        "status=0",
        f"for i in $(seq 0 {len(runs) - 1}); do",
        '  run "$i" || { echo "run $i failed (exit $?)" >&2; status=1; }',
        "done",
        'exit "$status"',
    ]
    _write_text(launch, "\n".join(lines) + "\n")
    os.chmod(launch, 0o755)
    sbatch = os.path.join(root, "sweep.sbatch")
    _write_text(
        sbatch,
        "\n".join(
            [
                "#!/usr/bin/env bash",
                f"#SBATCH --job-name=sweep-{os.path.basename(root) or 'root'}",
                f"#SBATCH --array=0-{len(runs) - 1}",
                f"#SBATCH --output={os.path.join(root, 'slurm-%A_%a.out')}",
                "# Add your cluster's --partition/--gres/--time lines here; submit with",
                f"#   sbatch {shlex.quote(sbatch)}",
                f'exec bash {shlex.quote(launch)} "$SLURM_ARRAY_TASK_ID"',
            ]
        )
        + "\n",
    )
    return launch, sbatch


# --------------------------------------------------------------------------- results

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
    record = _load_json(os.path.join(run.workdir, RUN_RECORD))
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
        metrics = _read_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
        train, evals = metrics.get("train", {}), metrics.get("eval", {})
        last_train = train[max(train)] if train else {}
        last_eval = evals[max(evals)] if evals else {}
        record = _load_json(os.path.join(run.workdir, RUN_RECORD))
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
    _write_text(md_path, markdown_table(fields, rows))
    png_path = os.path.join(root, "results.png")
    plot_results(png_path, rows)
    return [csv_path, md_path, png_path]


def _csv_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else format_value(value)


def plot_results(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Eval loss vs step per run (train loss dashed), and each run's final eval loss as bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (curves, bars) = plt.subplots(
        1, 2, figsize=(13, 0.5 * max(len(rows), 8) + 1), gridspec_kw={"width_ratios": [3, 2]}
    )
    for i, row in enumerate(rows):
        metrics = _read_jsonl(os.path.join(row["workdir"], "metrics.jsonl"))
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
    plt.close(fig)


# --------------------------------------------------------------------------- small helpers


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _load_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: str, record: Any) -> None:
    _write_text(path, json.dumps(record, indent=2) + "\n")
