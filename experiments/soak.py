r"""Soak test of crash recovery (not run in CI): kill a training run at random moments, damage
random bytes of random checkpoint files, relaunch, and check that nothing is lost or wrong.

    .venv/bin/python experiments/soak.py --kills=20 --flips=10 --workdir=/tmp/soak

A tiny decoder-only run (`--steps` steps, a checkpoint every `--checkpoint_every`) is trained
once without interruption as the reference. Then the same run is launched in another workdir and
SIGKILLed `--kills` times after a random delay (during start-up, compilation, steps or an async
save alike); before `--flips` of the relaunches, 4 random bytes of a random file of a random
checkpoint are XORed. The last launch runs to the end. It prints:

- trials: kills and byte flips made;
- redone steps: steps trained by a killed run after its last checkpoint (retrained after the
  relaunch; what a kill costs), and missing steps: steps with no metrics at the end (lost work);
- wrong resumes: a relaunch that resumed from a checkpoint newer than the newest committed one,
  skipped an undamaged newer one, or failed;
- mismatched metrics: steps whose final logged loss differs from the reference run's (rel 1e-6):
  damage that went unnoticed and changed the training.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

from t5x_like.cli import main_with_clear_errors, parse_flags

_KILLS = flags.DEFINE_integer("kills", 20, "Relaunches ended by SIGKILL at a random moment.")
_FLIPS = flags.DEFINE_integer(
    "flips", 10, "Relaunches preceded by XORing 4 random bytes of a random checkpoint file."
)
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps of the soaked run.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 10, "Steps between checkpoints.")
_STARTUP_KILLS = flags.DEFINE_float(
    "startup_kills", 0.25, "Fraction of the kills made during start-up (restore, compilation)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the kill delays and the damaged bytes.")
_WORKDIR = flags.DEFINE_string(
    "workdir", "/tmp/t5x_like_soak", "Holds reference/ and soaked/ (both replaced)."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data dir of the embedded corpus (default: TFDS's own)."
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESUMED = re.compile(r"Resumed from (.*)/(\d+)\.")


def _command(workdir: str) -> list[str]:
    fields = {
        "data.vocab_size": 256,
        "data.seq_len": 32,
        "model.d_model": 32,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.mlp_dim": 64,
        "train.batch_size": 8,
        "train.steps": _STEPS.value,
        "train.log_every": 1,
        "train.eval_every": 0,
        "train.checkpoint_every": _CHECKPOINT_EVERY.value,
        "optimizer.warmup_steps": 10,
    }
    if _DATA_DIR.value:
        fields["data.data_dir"] = _DATA_DIR.value
    return [
        sys.executable,
        os.path.join(REPO, "experiments", "train.py"),
        "--config=" + os.path.join(REPO, "configs", "decoder_only.py"),
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in fields.items()),
    ]


def _losses(workdir: str) -> dict[int, float]:
    """The last logged loss of each step (a killed run's torn last line skipped)."""
    out: dict[int, float] = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("split") == "train" and "loss" in record:
                out[int(record["step"])] = float(record["loss"])
    return out


def _committed(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _flip(workdir: str, rng: random.Random) -> tuple[int, str] | None:
    """XORs 4 random bytes of a random committed checkpoint (the newest one more often), in a
    file drawn in proportion to its size; returns (step, file)."""
    steps = _committed(workdir)
    if not steps:
        return None
    step = steps[-1] if rng.random() < 0.7 or len(steps) == 1 else rng.choice(steps[:-1])
    root = os.path.join(workdir, "checkpoints", str(step))
    files = [
        os.path.join(d, n)
        for d, _, names in os.walk(root)
        for n in names
        if os.path.getsize(os.path.join(d, n)) >= 4
    ]
    # A byte of the disk at random: a file in proportion to its size.
    path = rng.choices(files, weights=[os.path.getsize(p) for p in files])[0]
    with open(path, "r+b") as f:
        offset = rng.randrange(0, os.path.getsize(path) - 3)
        f.seek(offset)
        chunk = f.read(4)
        f.seek(offset)
        f.write(bytes(b ^ rng.randrange(1, 256) for b in chunk))
    return step, os.path.relpath(path, workdir)


def _run(workdir: str, kill: tuple[str, float] | None) -> tuple[int, str, int]:
    """Launches the run and SIGKILLs it at `kill`: ("time", seconds after the launch) or
    ("step", a step it must have logged, then up to 0.5 s more); None: runs to the end.
    (exit code, stderr, max logged step when it ended)."""
    log = os.path.join(os.path.dirname(workdir), "launch.log")
    with open(log, "w") as err:
        proc = subprocess.Popen(_command(workdir), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 3600
        if kill is not None and kill[0] == "time":
            deadline = time.time() + kill[1]
        while proc.poll() is None and time.time() < deadline:
            reached = max(_losses(workdir), default=0)
            if kill is not None and kill[0] == "step" and reached >= kill[1]:
                time.sleep(random.uniform(0, 0.5))
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open(log) as f:
        stderr = f.read()
    return proc.returncode, stderr, max(_losses(workdir), default=0)


def _startup_seconds(stderr: str) -> float:
    """Seconds from the launch to the first step's end, from the run's log (else 10)."""
    match = re.search(r"First step took ([0-9.]+)s", stderr)
    return float(match.group(1)) + 5.0 if match else 10.0


def main(argv: list[str]) -> None:
    del argv
    rng = random.Random(_SEED.value)
    random.seed(_SEED.value + 1)  # The extra delay after a kill's step.
    reference = os.path.join(_WORKDIR.value, "reference")
    soaked = os.path.join(_WORKDIR.value, "soaked")
    for d in (reference, soaked):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(_WORKDIR.value, exist_ok=True)
    start = time.time()
    code, stderr, _ = _run(reference, None)
    startup = _startup_seconds(stderr)
    if code != 0:
        sys.exit(f"The reference run failed (exit {code}):\n{stderr[-2000:]}")
    expected = _losses(reference)
    print(f"reference: {len(expected)} steps in {time.time() - start:.0f}s", flush=True)

    flip_at = set(rng.sample(range(1, _KILLS.value + 1), min(_FLIPS.value, _KILLS.value)))
    redone = wrong = flips = kills = 0
    damaged: set[int] = set()
    last_logged = 0
    for trial in range(_KILLS.value + 1):
        if trial in flip_at:
            flipped = _flip(soaked, rng)
            if flipped:
                flips += 1
                damaged.add(flipped[0])
                print(f"  flipped 4 bytes of {flipped[1]}", flush=True)
        committed = _committed(soaked)
        final = trial == _KILLS.value
        if final:
            kill = None
        elif rng.random() < _STARTUP_KILLS.value:
            kill = ("time", rng.uniform(0.5, startup))
        else:
            target = last_logged + rng.randint(1, 3 * _CHECKPOINT_EVERY.value)
            kill = ("step", min(target, _STEPS.value - 1))
        code, stderr, logged = _run(soaked, kill)
        kills += not final
        resumed = _RESUMED.search(stderr)
        decided = resumed is not None or "First step took" in stderr
        if decided:  # Else killed before choosing where to resume: nothing to judge.
            resumed_step = int(resumed.group(2)) if resumed else 0
            redone += max(0, last_logged - resumed_step)
            undamaged = [s for s in committed if s not in damaged]
            ok = resumed_step <= max(committed, default=0) and (
                resumed_step >= max(undamaged, default=0)
            )
            last_logged = logged
        else:
            ok = True
        if final and code != 0:
            # Right only when every kept checkpoint was damaged: then refusing is correct.
            ok = bool(committed) and set(committed) <= damaged and ("can be restored" in stderr)
        wrong += not ok
        damaged = {s for s in damaged if s in _committed(soaked)}  # Moved aside: gone.
        where = f"resumed from {resumed_step}" if decided else "killed before resuming"
        print(
            f"trial {trial}: {'final run' if final else 'killed'} (exit {code}); {where} "
            f"(committed {committed[-3:]}); logged through {logged}"
            f"{'' if ok else '  <-- WRONG RESUME'}",
            flush=True,
        )
    got = _losses(soaked)
    missing = [s for s in expected if s not in got]
    mismatched = [
        s for s in expected if s in got and abs(got[s] - expected[s]) > 1e-6 * abs(expected[s])
    ]
    print(
        f"\ntrials: {kills} kills, {flips} byte flips; redone steps: {redone}; missing steps: "
        f"{len(missing)}; wrong resumes: {wrong}; mismatched metrics: {len(mismatched)} of "
        f"{len(expected)} steps; {time.time() - start:.0f}s in all."
    )
    if missing or wrong or mismatched:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=parse_flags)
