"""Where a compiled step's time goes: a `jax.profiler` trace of a few steps, its per-op times
joined with the HLO's metadata (which model op each XLA op came from).

The trace (TensorBoard/Perfetto-readable, under the profile directory) records one event per
executed XLA op on the device threads; `op_breakdown` sums them per op and per model part
(forward/backward x MLP, attention, LM head, ...), as shares of the summed op time.

Two things about XLA:CPU traces shape the figures. Independent ops run at the same time, one
per thread, so the summed op time exceeds the wall time and an op's time is its own thread's.
And a plain `dot` (one XLA did not hand to its matmul library, e.g. a weight gradient that
contracts both operands' leading axis) runs on Eigen asynchronously: its event ends when the
work is dispatched, and the work shows as a gap in which no op is traced on any thread.
`async_dot_times` gives each such gap to the dot dispatched before it.
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
# Control flow: its event spans ops of its body that the trace records themselves.
_CONTAINER_OPCODES = ("while", "conditional", "call")
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


def op_events(trace_path: str) -> list[tuple[str, float, float]]:
    """(name, start, duration) in microseconds of every event on the device (non-Python)
    threads of a trace, in start order (`op_breakdown` keeps the names that are HLO ops)."""
    with gzip.open(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    out = []
    for e in events:
        if e.get("ph") != "X" or "::" in e["name"] or e["name"].startswith("$"):
            continue
        if threads.get((e.get("pid"), e.get("tid")), "python") == "python":
            continue
        out.append((e["name"], float(e["ts"]), float(e.get("dur", 0.0))))
    return sorted(out, key=lambda event: event[1])


def async_dot_times(
    events: list[tuple[str, float, float]], metadata: dict[str, dict[str, Any]]
) -> tuple[dict[str, float], float, float]:
    """(microseconds per plain `dot` of the untraced time it ran in, the untraced time left
    over, the wall time from the first op to the end of the last).

    Untraced time is a gap between HLO ops on all threads together. A gap goes to the last
    plain dot that started after the previous gap (its work is what runs there); a gap with no
    such dot is the runtime's own (dispatch, the host between steps) and is left over.
    """
    ops = [e for e in events if e[0] in metadata]
    attributed: dict[str, float] = collections.Counter()
    if not ops:
        return {}, 0.0, 0.0
    leftover, busy_until, last_dot = 0.0, ops[0][1], None
    for name, start, duration in ops:
        if start > busy_until:
            if last_dot is None:
                leftover += start - busy_until
            else:
                attributed[last_dot] += start - busy_until
            last_dot = None
        if metadata[name].get("opcode") == "dot":
            last_dot = name
        busy_until = max(busy_until, start + duration)
    return dict(attributed), leftover, busy_until - ops[0][1]


def hlo_metadata(hlo_text: str) -> dict[str, dict[str, Any]]:
    """op name -> {"shape", "opcode", "matmul", "op_name"} from a compiled module's HLO text."""
    info = {}
    for line in hlo_text.splitlines():
        match = _HLO_LINE.match(line)
        if not match:
            continue
        name, shape, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        info[name] = {
            "shape": shape,
            "opcode": opcode,
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


def step_profile(
    trace_path: str, metadata: dict[str, dict[str, Any]], steps: int, top: int = 12
) -> dict[str, Any]:
    """`op_breakdown` of a trace of `steps` steps, each plain dot credited with the untraced
    time its asynchronous work ran in, loops and calls not counted over their bodies' ops;
    also the wall time per step and the untraced time left."""
    events = [
        e
        for e in op_events(trace_path)
        if e[0] in metadata and metadata[e[0]]["opcode"] not in _CONTAINER_OPCODES
    ]
    times: dict[str, float] = collections.Counter()
    for name, _, duration in events:
        times[name] += duration
    async_us, leftover_us, wall_us = async_dot_times(events, metadata)
    for name, us in async_us.items():
        times[name] += us
    breakdown = op_breakdown(dict(times), metadata, steps, top)
    per_step = lambda us: us / 1000 / steps  # noqa: E731
    breakdown.update(
        wall_ms_per_step=per_step(wall_us),
        async_dot_ms_per_step=per_step(sum(async_us.values())),
        untraced_ms_per_step=per_step(leftover_us),
    )
    return breakdown


def breakdown_rows(breakdown: dict[str, Any]) -> list[tuple[str, Any]]:
    """Table rows of `op_breakdown`'s (or `step_profile`'s) result."""
    rows: list[tuple[str, Any]] = [
        ("profile (shares of summed XLA op time)", None),
        ("op time per step (ms, all threads)", breakdown["op_time_ms_per_step"]),
    ]
    if "wall_ms_per_step" in breakdown:
        rows += [
            ("  of which async Eigen dots, untraced (ms)", breakdown["async_dot_ms_per_step"]),
            ("wall time per step (ms)", breakdown["wall_ms_per_step"]),
            ("  with no op and no dot on any thread (ms)", breakdown["untraced_ms_per_step"]),
        ]
    rows += [(k, f"{100 * v:.1f}%") for k, v in breakdown["by_kind"].items()]
    rows += [(k, f"{100 * v:.1f}%") for k, v in breakdown["by_part"].items() if v >= 0.005]
    rows.append(("top ops", None))
    for op in breakdown["top_ops"]:
        shape = op["shape"] if len(op["shape"]) <= 40 else op["shape"][:37] + "..."  # Tuples.
        label = f"{op['op']} {shape}"
        rows.append((label, f"{100 * op['share']:.1f}%  {op['op_name'][-90:]}"))
    return rows
