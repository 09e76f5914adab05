"""The project's user-facing error type, in a leaf module every layer may import."""


class ConfigError(ValueError):
    """A config value that cannot work; the message says which field and how to fix it."""
