"""Log setup shared by the experiment scripts: our progress at INFO, libraries' chatter hidden.

Orbax logs several INFO lines per checkpoint (handler registries, barrier setup, option dumps)
through absl; they bury the training progress, so below WARNING they are dropped.
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


def setup_logging(verbosity: int = logging.INFO) -> None:
    """INFO logs from t5x_like (and anything not in QUIET_LIBRARIES); call once in main()."""
    logging.set_verbosity(verbosity)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
