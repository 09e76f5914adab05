"""Log setup shared by the experiment scripts: our progress at INFO, libraries' chatter hidden.

Orbax logs several INFO lines per checkpoint (handler registries, barrier setup, option dumps)
and TFDS several per dataset load ("Load dataset info from ...") through absl; they bury the
training progress, so below WARNING they are dropped. JAX logs at INFO that it found no TPU
library on every machine without one ("Unable to initialize backend 'tpu'"): that one message
is dropped too, by its logger and text (`EXPECTED_MESSAGES`).

In a multi-process job only process 0 logs at INFO; the others log warnings and errors only,
each line prefixed with `[process i/n]`, so one log tells the story and problems still show
where they happen.
"""

import contextlib
import logging as pylogging
from collections.abc import Iterator

from absl import logging

# Path fragments of libraries whose INFO records are dropped.
QUIET_LIBRARIES = ("/orbax/", "/tensorflow_datasets/")
# (logger name, message start) of INFO records that report an expected state, not a problem.
EXPECTED_MESSAGES = (
    # JAX probes its TPU plugin on every start; without libtpu (any CPU or GPU machine) it
    # says so at INFO. A TPU that fails to start is a RuntimeError or a WARNING, still shown.
    ("jax._src.xla_bridge", "Unable to initialize backend 'tpu'"),
)


class _QuietLibraries(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.levelno >= pylogging.WARNING:
            return True
        if any(fragment in record.pathname for fragment in QUIET_LIBRARIES):
            return False
        return not any(
            record.name == name and str(record.msg).startswith(start)
            for name, start in EXPECTED_MESSAGES
        )


class _DropMessage(pylogging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: pylogging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


@contextlib.contextmanager
def without_message(start: str, logger_name: str = "absl") -> Iterator[None]:
    """Drops the records of `logger_name` whose message starts with `start` while the block
    runs: for a library call known to warn about what the caller asked for (Orbax warns
    "Given directory is read only" whenever a manager is opened read-only). Only that message,
    only from that logger, only then; every other record passes."""
    logger = pylogging.getLogger(logger_name)
    dropper = _DropMessage(start)
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)


class _ProcessPrefix(pylogging.Filter):
    """Prefixes each record's message with this process's place in the job."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: pylogging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = f"{self.prefix}{record.msg}"
        return True


def _process_place() -> tuple[int, int]:
    """(index, count) of this process; (0, 1) unless jax.distributed is initialised, so that
    setting up logs never starts JAX's backends on its own."""
    import jax

    if not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def setup_logging(
    verbosity: int = logging.INFO,
    process_index: int | None = None,
    process_count: int | None = None,
) -> None:
    """INFO logs from t5x_like (and anything not in QUIET_LIBRARIES); call once in main(),
    after `distributed.initialize_from_flags()`.

    `process_index` / `process_count` default to this process's place in the job; processes
    other than 0 log at WARNING and above only, prefixed with their index.
    """
    if process_index is None or process_count is None:
        process_index, process_count = _process_place()
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    for f in [f for f in handler.filters if isinstance(f, _ProcessPrefix)]:
        handler.removeFilter(f)
    if process_count > 1 and process_index != 0:
        verbosity = min(verbosity, logging.WARNING)  # absl: lower is quieter.
        handler.addFilter(_ProcessPrefix(f"[process {process_index}/{process_count}] "))
    logging.set_verbosity(verbosity)
