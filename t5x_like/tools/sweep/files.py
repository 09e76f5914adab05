"""Files shared by the sweep modules: atomic text/JSON writes, JSON reads and run metrics.

`read_metrics_jsonl` is how the sweep reads a run's `metrics.jsonl` (for finished-run detection,
the results table and the plot).
"""

from __future__ import annotations

import json
import os
from typing import Any

from t5x_like.training.metrics_writer import read_metrics

SPLITS = ("train", "eval")


def read_metrics_jsonl(path: str) -> dict[str, dict[int, dict[str, Any]]]:
    """{split: {step: last record}} of the run whose `metrics.jsonl` is `path` ({} if it logged
    nothing yet; torn lines skipped).

    Read through training.metrics_writer.read_metrics, so the sweep follows whatever layout
    the trainer writes; forgiving where read_metrics raises, because a sweep reads the logs of
    runs that have not started or were killed, and must report them rather than stop.
    """
    workdir = os.path.dirname(path)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for split in SPLITS:
        try:
            records = read_metrics(workdir, split)
        except (FileNotFoundError, KeyError, TypeError, ValueError):
            return {}
        if records:
            out[split] = records
    return out


def jsonable(value: Any) -> Any:
    """`value` as JSON can hold it: tuples become lists, dict keys strings, other objects str."""
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def load_json(path: str) -> Any:
    """The JSON in `path`, or None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file, so a reader never sees half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, record: Any) -> None:
    """`record` as indented JSON in `path`, written like `write_text`."""
    write_text(path, json.dumps(record, indent=2) + "\n")
