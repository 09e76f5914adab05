"""Log setup shared by the experiment scripts: our progress at INFO, libraries' chatter hidden.

Orbax logs several INFO lines per checkpoint (handler registries, barrier setup, option dumps)
through absl; they bury the training progress, so below WARNING they are dropped.

In a multi-process job only process 0 logs at INFO; the others log warnings and errors only,
each line prefixed with `[process i/n]`, so one log tells the story and problems still show
where they happen.
"""

import logging as pylogging

from absl import logging

# Path fragments of libraries whose INFO records are dropped.
QUIET_LIBRARIES = ("/orbax/",)


class _QuietLibraries(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        if record.levelno >= pylogging.WARNING:
            return True
        return not any(fragment in record.pathname for fragment in QUIET_LIBRARIES)


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
