"""A watchdog for a run that stops making progress: a hung collective, save or barrier.

A collective whose peer died, a checkpoint commit waiting on an unreachable store or a
multi-host barrier one host never reaches blocks the main thread forever, and a scheduler sees a
live process that trains nothing. The training loop tells the watchdog what it is doing
(`watch.phase("train step", step)` before each step, `with watch.phase("checkpoint save", step)`
around a save); a background thread fires when one phase lasts longer than `timeout_s`:

- one line naming the phase, the step and the host (`host <name> process <i>/<n>`) is logged
  and written to stderr;
- the stacks of every thread go to `<dump_dir>/watchdog-<host>-p<i>.txt`, where the user looks
  for why;
- the process exits with `EXIT_CODE`, so the launcher (SLURM, a pod's job set) can restart it
  from the last checkpoint instead of leaving it hung.

The first phase is not watched until it ends (`arm_after_first`): the first step compiles,
which can legitimately take longer than any later step.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

from absl import logging

# Distinct from a failed run's 1 and a signal's 128+n: "stopped by the watchdog".
EXIT_CODE = 3


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Watchdog:
    """Fires when one phase of the loop outlasts `timeout_s` (0 disables it)."""

    def __init__(
        self,
        timeout_s: float,
        *,
        host: str | None = None,
        dump_dir: str | None = None,
        on_timeout: Callable[[str], None] | None = None,
        poll_s: float | None = None,
    ):
        """`host`: how the message names this process; `dump_dir`: where the threads' stacks
        go; `on_timeout(message)`: what firing does (default: log, dump stacks, exit
        `EXIT_CODE`)."""
        self.timeout_s = float(timeout_s)
        self.host = host or f"host {socket.gethostname()}"
        self.dump_dir = dump_dir
        self._on_timeout = on_timeout or self._abort
        self._poll_s = poll_s if poll_s is not None else min(5.0, max(self.timeout_s / 10, 0.01))
        self._lock = threading.Lock()
        self._what: str | None = None
        self._step: int | None = None
        self._since = time.monotonic()
        self._armed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    def __enter__(self) -> Watchdog:
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._run, name="t5x_like-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def arm(self) -> None:
        """Starts watching (after the first, compiling step)."""
        with self._lock:
            self._armed = True
            self._since = time.monotonic()

    @contextlib.contextmanager
    def _phase_scope(self, previous: tuple[str | None, int | None]) -> Iterator[None]:
        try:
            yield
        finally:
            self.set_phase(*previous)

    def set_phase(self, what: str | None, step: int | None = None) -> None:
        """Marks the start of `what` (at `step`); its clock starts now."""
        with self._lock:
            self._what, self._step, self._since = what, step, time.monotonic()

    def phase(self, what: str, step: int | None = None) -> contextlib.AbstractContextManager:
        """Marks the start of `what`; as a context manager, the previous phase resumes (with
        a fresh clock) when it ends."""
        with self._lock:
            previous = (self._what, self._step)
        self.set_phase(what, step)
        return self._phase_scope(previous)

    def _message(self, waited: float) -> str:
        at = f" at step {self._step}" if self._step is not None else ""
        dump = f"; thread stacks in {self._dump_path()}" if self.dump_dir is not None else ""
        return (
            f"Watchdog: no progress for {waited:.0f}s in {self._what}{at} on {self.host} "
            f"(train.watchdog_s={self.timeout_s:g}): a hung collective, save or barrier, or a "
            f"peer that died{dump}. Exiting with status {EXIT_CODE}; relaunching resumes from "
            "the last checkpoint."
        )

    def _dump_path(self) -> str:
        name = self.host.replace(" ", "-").replace("/", "of")
        return os.path.join(self.dump_dir or ".", f"watchdog-{name}.txt")

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            with self._lock:
                waited = time.monotonic() - self._since
                due = self._armed and self._what is not None and waited > self.timeout_s
                message = self._message(waited) if due else None
            if message is not None:
                self.fired = message
                self._on_timeout(message)
                return

    def _abort(self, message: str) -> None:
        logging.error("%s", message)
        sys.stderr.write(message + "\n")
        if self.dump_dir is not None:
            try:
                os.makedirs(self.dump_dir, exist_ok=True)
                with open(self._dump_path(), "w") as f:
                    faulthandler.dump_traceback(file=f, all_threads=True)
            except OSError as e:  # A full or read-only disk must not keep the process alive.
                sys.stderr.write(f"Watchdog: could not write the thread stacks: {e}\n")
        _exit(EXIT_CODE)
