"""Writes metrics to `metrics.jsonl` and TensorBoard event files (tensorboardX, no TensorFlow)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax


class MetricsWriter:
    """Appends one JSON line per (step, split) and mirrors scalars to TensorBoard.

    Only process 0 writes, so multi-host runs produce one set of files. Appending (not
    truncating) keeps the history of a resumed run; readers take the last entry per step.
    """

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            self._jsonl = open(path, "a", encoding="utf-8")
            if _ends_mid_line(path):
                # A run killed while writing left half a record: start the next one on its own
                # line (readers skip the broken one).
                self._jsonl.write("\n")
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if key not in ("step", "split", "time") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = None


def _to_python(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _ends_mid_line(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def read_metrics(workdir: str, split: str = "train") -> dict[int, dict[str, Any]]:
    """The last logged record of each step for `split` (later lines win, as after a resume).

    A line that is not a complete JSON record (a run killed mid-write) is skipped.
    """
    out: dict[int, dict[str, Any]] = {}
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("split") == split:
                out[record["step"]] = record
    return dict(sorted(out.items()))
