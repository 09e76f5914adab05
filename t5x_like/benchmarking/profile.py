"""Where a compiled step's time goes: a `jax.profiler` trace of a few steps, its per-op times
joined with the HLO's metadata (which model op each XLA op came from).

The trace (TensorBoard/Perfetto-readable, under the profile directory) records one event per
executed XLA op on the device threads; `op_breakdown` sums them per op and per model part
(forward/backward x MLP, attention, LM head, ...), as shares of the summed op time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from collections.abc import Callable
from typing import Any

import jax

# HLO instruction line: `%name = shape opcode(...) ... metadata={op_name="..."`.
_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MATMUL_MARKERS = ("__ynn_fusion", "__onednn", "__cublas", "dot(", "convolution(")
# Model parts, by the module names in op_name metadata; first match wins.
_PARTS = (
    ("LM head / embedding", ("attend", "/logits/", "token_embed")),
    ("attention projections", ("/query/", "/key/", "/value/", "/out/")),
    ("attention core", ("attention", "rope", "relpos")),  # Scores, softmax, values, RoPE.
    ("MLP", ("/mlp/",)),
    ("norms", ("norm",)),
)


def trace_steps(run_step: Callable[[], Any], steps: int, log_dir: str) -> str:
    """Runs `run_step` `steps` times under the profiler; returns the trace.json.gz path."""
    with jax.profiler.trace(log_dir):
        for _ in range(steps):
            jax.block_until_ready(run_step())
    traces = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"The profiler wrote no *.trace.json.gz under {log_dir}.")
    return max(traces, key=os.path.getmtime)


def op_times(trace_path: str) -> dict[str, float]:
    """Total microseconds per event name over the device (non-Python) threads of a trace
    (`op_breakdown` keeps the names that are HLO instructions)."""
    with gzip.open(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    totals: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or "::" in e["name"] or e["name"].startswith("$"):
            continue
        if threads.get((e.get("pid"), e.get("tid")), "python") == "python":
            continue
        totals[e["name"]] += float(e.get("dur", 0.0))
    return dict(totals)


def hlo_metadata(hlo_text: str) -> dict[str, dict[str, Any]]:
    """op name -> {"shape", "matmul", "op_name"} from a compiled module's HLO text."""
    info = {}
    for line in hlo_text.splitlines():
        match = _HLO_LINE.match(line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        info[name] = {
            "shape": shape,
            "matmul": opcode in ("dot", "convolution") or any(m in line for m in _MATMUL_MARKERS),
            "op_name": op_name.group(1) if op_name else "",
        }
    return info


def _direction(op_name: str) -> str:
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name or "Transformer" in op_name:
        return "forward"
    return "update"  # Outside the model: gradient norm, clipping, optimizer.


def model_part(op_name: str) -> str:
    """Which part of the model an HLO op_name belongs to; outside the model: the loss (under
    the gradient's jvp/transpose) or the update (gradient norm, clipping, optimizer)."""
    if "Transformer" not in op_name:
        return "loss" if "jvp(" in op_name or "transpose(" in op_name else "optimizer / other"
    lowered = op_name.lower()
    for part, markers in _PARTS:
        if any(m in lowered for m in markers):
            return part
    return "other model ops"


def op_breakdown(
    times_us: dict[str, float], metadata: dict[str, dict[str, Any]], steps: int, top: int = 12
) -> dict[str, Any]:
    """Shares of the summed op time: per model part x direction, matmul vs other, top ops."""
    times_us = {name: us for name, us in times_us.items() if name in metadata}
    total = sum(times_us.values()) or 1.0
    parts: dict[str, float] = collections.Counter()
    kinds: dict[str, float] = collections.Counter()
    for name, us in times_us.items():
        meta = metadata[name]
        parts[f"{_direction(meta['op_name'])}: {model_part(meta['op_name'])}"] += us
        kinds["matmul" if meta["matmul"] else "non-matmul (fusions, copies, reductions)"] += us
    top_ops = []
    for name, us in sorted(times_us.items(), key=lambda kv: -kv[1])[:top]:
        meta = metadata[name]
        top_ops.append(
            {
                "op": name,
                "ms_per_step": us / 1000 / steps,
                "share": us / total,
                "shape": meta["shape"],
                "op_name": meta["op_name"].replace("jit(train_step)/", ""),
            }
        )
    share = lambda d: {k: v / total for k, v in sorted(d.items(), key=lambda kv: -kv[1])}  # noqa: E731
    return {
        "op_time_ms_per_step": total / 1000 / steps,
        "by_part": share(parts),
        "by_kind": share(kinds),
        "top_ops": top_ops,
    }


def breakdown_rows(breakdown: dict[str, Any]) -> list[tuple[str, Any]]:
    """Table rows of `op_breakdown`'s result."""
    rows: list[tuple[str, Any]] = [
        ("profile (shares of summed XLA op time)", None),
        ("op time per step (ms, all threads)", breakdown["op_time_ms_per_step"]),
    ]
    rows += [(k, f"{100 * v:.1f}%") for k, v in breakdown["by_kind"].items()]
    rows += [(k, f"{100 * v:.1f}%") for k, v in breakdown["by_part"].items() if v >= 0.005]
    rows.append(("top ops", None))
    for op in breakdown["top_ops"]:
        shape = op["shape"] if len(op["shape"]) <= 40 else op["shape"][:37] + "..."  # Tuples.
        label = f"{op['op']} {shape}"
        rows.append((label, f"{100 * op['share']:.1f}%  {op['op_name'][-90:]}"))
    return rows
