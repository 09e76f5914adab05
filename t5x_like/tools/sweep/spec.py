"""What a sweep is: its spec parsed and expanded into runs, each built, validated and named.

A sweep spec names config fields and their values, e.g.

    model.num_layers=2,4;optimizer.learning_rate=1e-3,3e-4

(';' separates axes, ',' separates values; commas inside brackets or quotes belong to the value,
so tuples like `(1,2)` work). Grid axes are crossed (cartesian product); a zipped group pairs its
axes' i-th values and counts as one axis of the product. Values are parsed exactly as
experiments/train.py parses `--config.<field>=value` (ml_collections, by the field's type), and
every run's config is built and validated before anything is launched (`plan`). Each run gets a
workdir `<root>/<name>` named after its swept values (`num_layers=2+learning_rate=0.001`: no
commas or other characters a shell or report.py's `--workdirs=a,b` would split or expand) and a
launch command for experiments/train.py; `<root>/sweep.json` records them all.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import flags, logging
from ml_collections import config_dict

from t5x_like import cli
from t5x_like.config import MESH_AXES
from t5x_like.errors import ConfigError
from t5x_like.experiment.validation import validate_config
from t5x_like.tools.sweep.files import jsonable, load_json, write_json

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TRAIN_SCRIPT = os.path.join(REPO, "experiments", "train.py")
SWEEP_JSON = "sweep.json"
MAX_NAME_LEN = 80
# Characters a run name keeps: none that a shell expands or splits, or that report.py's
# comma-separated --workdirs would split (a name is a path component in both).
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
# Joins a name's `field=value` parts.
NAME_SEPARATOR = "+"
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
        out["overrides"] = {k: jsonable(v) for k, v in self.overrides.items()}
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
        return math.prod(max(int(cfg.mesh[a]), 1) for a in MESH_AXES)
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
    text = json.dumps(jsonable(obj), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_names(fields: Sequence[str], runs: Sequence[dict[str, Any]]) -> list[str]:
    """Unique, deterministic, shell-safe names, e.g. `num_layers=2+learning_rate=0.001`.

    A field is named by its last component unless two swept fields share it. Characters other
    than letters, digits and `._=+-` become `_` (a tuple `(1, 2)` reads `_1_2_`), so a name
    needs no quoting in a shell and holds no comma; names longer than MAX_NAME_LEN, and names
    that collide once made safe, end in a hash of their values.
    """
    leaves = [f.rsplit(".", 1)[-1] for f in fields]
    labels = {
        f: (leaf if leaves.count(leaf) == 1 else f) for f, leaf in zip(fields, leaves, strict=True)
    }
    names = []
    for run in runs:
        name = NAME_SEPARATOR.join(f"{labels[f]}={format_value(run[f])}" for f in fields)
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


def write_sweep_json(
    root: str,
    spec: SweepSpec,
    fields: Sequence[str],
    runs: Sequence[Run],
    metric: tuple[str, str] | None = None,
) -> str:
    """`<root>/sweep.json`: the spec, the swept fields, every run (name, workdir, command) and
    the target metric (name, min|max|auto) its results are ranked by."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, SWEEP_JSON)
    previous = load_json(path)
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
        "metric": list(metric) if metric else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(path, record)
    return path


def load_sweep_metric(root: str) -> tuple[str, str] | None:
    """The target metric (name, mode) recorded in `<root>/sweep.json`, or None."""
    record = load_json(os.path.join(os.path.abspath(os.path.expanduser(root)), SWEEP_JSON))
    metric = (record or {}).get("metric")
    return (metric[0], metric[1]) if metric else None


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
