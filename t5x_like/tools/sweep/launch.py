"""Launching a sweep's runs: locally one after another as child processes (skipping finished
runs), or as a shell script and a SLURM array script that run them elsewhere.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from absl import logging

from t5x_like.tools.sweep.files import load_json, read_metrics_jsonl, write_json, write_text
from t5x_like.tools.sweep.spec import Run

RUN_RECORD = "sweep_run.json"  # Per-run launch history written by `launch_local`.


def finished_step(run: Run) -> int | None:
    """`run.steps` when the run logged a train record and saved a checkpoint at that step."""
    metrics = read_metrics_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
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
    record = load_json(record_path) or {"launches": []}
    record["launches"].append(launch)
    write_json(record_path, record)
    return launch


def launch_local(runs: Sequence[Run], timeout_s: float | None = None) -> dict[str, str]:
    """Runs the unfinished runs one after another; returns {name: skipped|ok|failed|stopped}.

    "ok" means the run exited 0 *and* reached its last step with a checkpoint there; a run that
    exited 0 short of it (stopped by a signal after saving, as train.py does on SIGTERM) is
    "stopped": its relaunch resumes, but the sweep has not finished it.
    """
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
            log = os.path.join(run.workdir, "train.log")
            if launch["returncode"] == 0 and finished_step(run) is not None:
                outcome[run.name] = "ok"
                logging.info("%s finished in %.1fs.", run.name, launch["wall_s"])
            elif launch["returncode"] == 0:
                outcome[run.name] = "stopped"
                logging.error(
                    "%s stopped before its last step (%d) after %.1fs, its checkpoint saved; "
                    "relaunch the sweep to resume it. See %s",
                    run.name,
                    run.steps,
                    launch["wall_s"],
                    log,
                )
            else:
                outcome[run.name] = "failed"
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
    write_text(launch, "\n".join(lines) + "\n")
    os.chmod(launch, 0o755)
    sbatch = os.path.join(root, "sweep.sbatch")
    write_text(
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
