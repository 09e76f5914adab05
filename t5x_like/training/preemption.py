"""Graceful stop on SIGTERM / SIGINT: the trainer finishes its step, checkpoints and exits 0.

Schedulers preempt jobs with SIGTERM (then SIGKILL after a grace period); people press Ctrl-C.
`PreemptionGuard` turns either signal into a request that the training loop polls between
steps: the step in flight completes, the state of that step is saved and the run returns
normally, so relaunching the same command resumes exactly there. A second SIGINT aborts hard
(KeyboardInterrupt); a repeated SIGTERM is only logged. The previous handlers come back when
the guard exits.

In multi-process runs every process must stop after the same step, or the others would wait
forever in the next collective: `should_stop` ORs the processes' flags with a tiny allgather,
on every step (`check_every=1`, a few microseconds next to a step on CPU; raise it where
a host round trip per step matters, at the price of stopping up to that many steps later).
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any

from absl import logging

from t5x_like import collectives

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
    """Context manager recording stop requests; poll `should_stop(step)` between steps."""

    def __init__(self, check_every: int = 1):
        self.check_every = max(1, check_every)
        self.signal_name: str | None = None
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        # Python only delivers signals to the main thread; elsewhere (e.g. a test runner's
        # worker thread) the guard is inert and signals keep their default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal."""
        return self.signal_name is not None

    @property
    def reason(self) -> str:
        """The signal's name, or what stopped this process when another one received it."""
        return self.signal_name or "a stop signal on another process"

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.requested:
            if signum == signal.SIGINT:
                # The script's wrapper (cli.main_with_clear_errors) says so in one line.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            logging.warning("%s received again; already stopping after the current step.", name)
            return
        self.signal_name, self.received_at = name, time.time()
        logging.warning(
            "%s received: finishing the current step, then checkpointing and exiting "
            "(send SIGINT again to abort without a checkpoint).",
            name,
        )

    def should_stop(self, step: int) -> bool:
        """Whether any process asked to stop; collective in multi-process runs, so call it on
        every process at the same steps (it only communicates when `step % check_every == 0`)."""
        if step % self.check_every:
            return False
        return collectives.any_process(self.requested)
