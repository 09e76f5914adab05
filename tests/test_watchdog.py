"""The watchdog: a phase that outlasts train.watchdog_s ends the run, naming the step and host."""

import os
import subprocess
import sys
import textwrap
import threading
import time

from testutil import REPO

from t5x_like import watchdog


def _fired_watchdog(timeout_s=0.2, arm=True):
    fired = threading.Event()
    messages = []

    def on_timeout(message):
        messages.append(message)
        fired.set()

    watch = watchdog.Watchdog(timeout_s, host="host h7 process 3/4", on_timeout=on_timeout)
    if arm:
        watch.arm()
    return watch, fired, messages


def test_a_late_phase_fires_naming_the_step_and_host():
    watch, fired, messages = _fired_watchdog()
    with watch:
        watch.set_phase("checkpoint save", 120)
        assert fired.wait(5)
    [message] = messages
    assert message.startswith("Watchdog: no progress for ")
    assert "in checkpoint save at step 120 on host h7 process 3/4 (train.watchdog_s=0.2)" in message


def test_phases_that_keep_moving_never_fire():
    watch, fired, _ = _fired_watchdog(timeout_s=0.3)
    with watch:
        for step in range(20):
            watch.set_phase("train step", step)
            time.sleep(0.05)
        with watch.phase("evaluation", 20):
            time.sleep(0.1)
        assert not fired.is_set()


def test_nothing_fires_before_the_first_step_arms_it():
    watch, fired, _ = _fired_watchdog(arm=False)
    with watch:
        watch.set_phase("train step", 1)  # Compiling: may take long.
        assert not fired.wait(0.6)


def test_zero_disables_it():
    watch, fired, _ = _fired_watchdog(timeout_s=0)
    with watch:
        watch.set_phase("train step", 1)
        assert not fired.wait(0.3)
    assert watch._thread is None


_HANGING_SAVE = """
import sys, time
sys.path.insert(0, {tests!r})
from testutil import corpus_config
from t5x_like import checkpointing
from t5x_like.experiment import trainer

def hang(self, step, *args, **kwargs):
    if step == 2:
        time.sleep(600)  # A store that never answers.
    return save(self, step, *args, **kwargs)

save = checkpointing.Checkpointer.save
checkpointing.Checkpointer.save = hang
cfg = corpus_config({data_dir!r}, **{{"train.steps": 8, "train.checkpoint_every": 2,
                                      "train.watchdog_s": 3.0}})
trainer.train(cfg, {workdir!r})
"""


def test_a_hung_save_ends_the_process_with_the_watchdog_status(corpus_dir, tmp_path):
    workdir = str(tmp_path / "run")
    script = _HANGING_SAVE.format(tests=str(REPO / "tests"), data_dir=corpus_dir, workdir=workdir)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == watchdog.EXIT_CODE, proc.stderr[-3000:]
    assert time.time() - start < 200
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Watchdog: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "in checkpoint save at step 2 on host " in lines[0]
    dumps = [n for n in os.listdir(workdir) if n.startswith("watchdog-")]
    assert len(dumps) == 1
    stacks = open(os.path.join(workdir, dumps[0])).read()
    assert "in hang" in stacks  # The main thread's stack shows where it waits.
    assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
