"""Writes metrics to `metrics.jsonl` and TensorBoard event files (tensorboardX, no TensorFlow).

On an object-store workdir (gs://, s3://) there is no append: each record is written as a whole
chunk `metrics/<step>-...jsonl` (t5x_like/storage.py), and `read_metrics` reads both layouts.
TensorBoard event files go there through `_ObjectEventWriter`, registered with tensorboardX for
gs:// and s3:// in place of its own writers (which re-upload from `__del__` at interpreter exit
and read other endpoint variables than the SDKs do).
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import jax

from t5x_like import storage


class _ObjectEventWriter:
    """A TensorBoard event file on an object store: bytes kept in memory, the whole file
    uploaded at each flush that follows new bytes, nothing uploaded after `close` (and no
    `__del__`: nothing runs at interpreter exit)."""

    def __init__(self, path: str):
        self.path = path
        self._buffer = io.BytesIO()
        self._uploaded = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        size = self._buffer.tell()
        if self.closed or size == self._uploaded:
            return
        storage.write_bytes(self.path, self._buffer.getvalue())
        self._uploaded = size

    def close(self) -> None:
        self.flush()
        self.closed = True


class _ObjectEventWriterFactory:
    def open(self, path: str) -> _ObjectEventWriter:
        return _ObjectEventWriter(path)

    def directory_check(self, path: str) -> None:
        """Object stores have no directories to make."""


def _register_tensorboard_writers() -> None:
    from tensorboardX import record_writer

    for prefix in storage.SCHEMES:
        record_writer.register_writer_factory(prefix, _ObjectEventWriterFactory())


class MetricsWriter:
    """Appends one JSON line per (step, split) and mirrors scalars to TensorBoard.

    Only process 0 writes, so multi-host runs produce one set of files. Appending (not
    truncating) keeps the history of a resumed run; readers take the last entry per step.
    On object stores each record is one whole chunk object instead of an appended line.
    """

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = storage.resolve(workdir)
        self._remote = storage.is_remote(self.workdir)
        self._jsonl = None
        self._tb = None
        if self.enabled:
            if not self._remote:
                os.makedirs(self.workdir, exist_ok=True)
                path = os.path.join(self.workdir, storage.METRICS_FILE)
                self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115 - see close().
                if _ends_mid_line(path):
                    # A run killed while writing left half a record: start the next one on its
                    # own line (readers skip the broken one).
                    self._jsonl.write("\n")
            else:
                _register_tensorboard_writers()
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(storage.join(self.workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        if self._remote:
            storage.write_metrics_chunk(self.workdir, int(step), [json.dumps(record)])
        else:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        for key, value in record.items():
            if key not in ("step", "split", "time") and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{key}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
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

    Reads a local `metrics.jsonl` and the chunks of an object-store workdir alike
    (`storage.read_metrics_lines`). A line that is not a complete JSON record (a run killed
    mid-write) is skipped.

    Raises:
      FileNotFoundError: the workdir has no metrics.
    """
    out: dict[int, dict[str, Any]] = {}
    for line in storage.read_metrics_lines(workdir):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == split:
            out[record["step"]] = record
    return dict(sorted(out.items()))
