"""The experiment scripts' `--config` flag, with one-line errors for overrides that cannot work.

ml_collections reports a misspelt override (`--config.model.num_layerz=2`) as a bare
AttributeError or KeyError traceback raised while the flag is defined, and a value that does not
parse (`--config.train.batch_size=8.5`) without saying what to do. `ConfigFlag` defines the flag
at parse time (so both surface while parsing) and turns them into `ConfigError`s that name the
flag and the fix; as `app.run`'s flags_parser it prints them and exits with status 1.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from absl import flags
from ml_collections import config_flags

from t5x_like.config import ConfigError

_FIELDS_HINT = "configs/README.md lists every field and its default"


def _unknown_field_message(error: Exception, argv: list[str], name: str) -> str | None:
    """`error` (ml_collections' AttributeError/KeyError) as a sentence naming the override;
    None when no override has the missing key (the error came from elsewhere)."""
    text = str(error).replace("\\n", "\n")
    first = re.search(r"'([^'\\]+)", text)  # The missing key, quoted at the start.
    key = first.group(1) if first else ""
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    override = re.compile(rf"^-{{1,2}}(no)?{re.escape(name)}\.")
    paths = [override.sub("", arg).split("=", 1)[0] for arg in argv if override.match(arg)]
    path = next((p for p in paths if key and key in p.split(".")), None)
    if path is None:
        return None
    message = f"--{name}.{path}: the config has no field {path!r}"
    if suggestion:
        fixed = ".".join(suggestion.group(1) if part == key else part for part in path.split("."))
        message += f" (did you mean --{name}.{fixed}?)"
    return (
        f"{message}. An override can only set a field the config file defines: check the "
        f"spelling ({_FIELDS_HINT})."
    )


def define_and_parse(
    argv: list[str],
    default: str | None,
    help_string: str,
    *,
    name: str = "config",
    flag_values: flags.FlagValues = flags.FLAGS,
    help_module: str | None = None,
) -> tuple[Any, list[str]]:
    """Defines `--<name>` (a locked config file flag) for `argv`, then parses all flags.

    `help_module`: a module whose --help lists the flag (a script's: absl names the main
    module by argv[0]).

    Returns:
      (the flag's holder, the arguments left after parsing).

    Raises:
      ConfigError: an override of a field the config does not have, or a value that does not
        parse as the field's type.
      flags.Error: any other flag problem, as absl reports it.
    """
    try:
        holder = config_flags.DEFINE_config_file(
            name, default, help_string, flag_values=flag_values, lock_config=True, sys_argv=argv
        )
        if help_module:
            flag_values.register_key_flag_for_module(help_module, flag_values[name])
        rest = flag_values(argv)
    except (AttributeError, KeyError) as e:
        message = _unknown_field_message(e, argv, name)
        if message is None:
            raise
        raise ConfigError(message) from e
    except flags.IllegalFlagValueError as e:
        if not str(e).startswith(f"flag --{name}."):
            raise
        raise ConfigError(
            f"{e}. Give a value of the same type as the field's default ({_FIELDS_HINT})."
        ) from e
    return holder, rest


class ConfigFlag:
    """`--config` for a script: `app.run(main, flags_parser=CONFIG.parse)`, then `CONFIG.value`."""

    def __init__(self, default: str | None, help_string: str, name: str = "config"):
        self.default = default
        self.help_string = help_string
        self.name = name
        self._holder: Any = None

    @property
    def value(self) -> Any:
        """The parsed config (a ConfigDict), overrides applied."""
        return self._holder.value

    def parse(self, argv: list[str]) -> list[str]:
        """`app.run`'s flags_parser: bad overrides and flags print one line and exit 1."""
        try:
            self._holder, rest = define_and_parse(
                argv, self.default, self.help_string, name=self.name, help_module=argv[0]
            )
        except (ConfigError, flags.Error) as e:
            sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
            sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
            sys.exit(1)
        return rest


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message already says what to change: shown without a traceback."""
    # Imported when an error happens: the scripts' start-up stays light.
    from t5x_like import checkpointing, distributed, workdir
    from t5x_like.data import sources
    from t5x_like.training import nan_guard

    return (
        ConfigError,
        FileNotFoundError,
        sources.SplitNotFoundError,
        workdir.WorkdirLockedError,
        checkpointing.CheckpointSaveError,
        checkpointing.CorruptCheckpointError,
        distributed.DistributedError,
        nan_guard.NonFiniteError,
    )


def main_with_clear_errors(main: Any) -> Any:
    """Wraps a script's `main`: an error whose message names the fix ends the script with that
    one message and exit status 1; T5X_LIKE_TRACEBACK=1 shows the traceback as well."""

    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except Exception as e:
            if not isinstance(e, _user_errors()) or os.environ.get("T5X_LIKE_TRACEBACK") == "1":
                raise
            sys.stderr.write(f"ERROR ({type(e).__name__}): {e}\n")
            sys.exit(1)

    return wrapped
