"""The experiment scripts' `--config` flag, checked against the config schema while parsing.

Every `--config.<field>=<value>` override is checked against the schema (t5x_like/config.py)
before ml_collections applies it: an unknown field is named with the closest ones, a value that
does not parse as the field's type with the type it needs. A config file's own error (an
unknown preset, `configs/t5.py:huge`) is reported as one line too. `ConfigFlag.parse`, as
`app.run`'s flags_parser, prints these and exits with status 1; it also serves
`--help_config` (every field: type, default, allowed values, doc) and `--print_config` (the
resolved config as JSON), which exit 0 before the script does anything else.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

from t5x_like import config as config_lib
from t5x_like.errors import ConfigError

_FIELDS_HINT = "--help_config lists every field, its type and its default"
_HELP_CONFIG = "help_config"
_PRINT_CONFIG = "print_config"
_ACTION_HELP = {
    _HELP_CONFIG: "List every config field (type, default, allowed values, meaning) and exit.",
    _PRINT_CONFIG: "Print the resolved config (file and overrides) as JSON and exit.",
}
# absl's parsers, by field type, as config_flags parses an override of that type.
_PARSERS = {
    int: flags.IntegerParser(),
    float: flags.FloatParser(),
    bool: flags.BooleanParser(),
    str: flags.ArgumentParser(),
}


def _overrides(argv: Sequence[str], name: str) -> list[tuple[str, str | None]]:
    """(field path, value text or None for a bare boolean) of each `--<name>.<path>` argument."""
    pattern = re.compile(rf"^--?(no)?{re.escape(name)}\.([^=]*)(=(.*))?$", re.DOTALL)
    found = []
    for i, arg in enumerate(argv):
        match = pattern.match(arg)
        if not match:
            continue
        negated, path, has_value, value = match.groups()
        if has_value is None and not negated:
            field = config_lib.FIELDS.get(path)
            # `--config.x value`: absl takes the next argument as a non-boolean's value.
            if field is not None and field.type is not bool and i + 1 < len(argv):
                value = argv[i + 1]
        found.append((path, value))
    return found


def check_overrides(argv: Sequence[str], name: str = "config") -> None:
    """ConfigError for the first `--<name>.<path>=<value>` the schema refuses: a field it does
    not declare (with the closest names), or a value that does not parse as the field's type."""
    for path, value in _overrides(argv, name):
        field = config_lib.FIELDS.get(path)
        if field is None:
            close = difflib.get_close_matches(path, list(config_lib.FIELDS), n=1)
            hint = f" (did you mean --{name}.{close[0]}?)" if close else ""
            raise ConfigError(
                f"--{name}.{path}: the config has no field {path!r}{hint}. An override can only "
                f"set a field the schema declares: check the spelling ({_FIELDS_HINT})."
            )
        parser = _PARSERS.get(field.type)
        if value is None or parser is None:
            continue
        try:
            parser.parse(value)
        except ValueError as e:
            kind = config_lib.kind(field)
            raise ConfigError(
                f"--{name}.{path}={value}: {e} ({path}={value!r} is a str, but it must be "
                f"{kind}). Give a value of the same type as the field's default, e.g. "
                f"--{name}.{path}=<{kind}> ({_FIELDS_HINT})."
            ) from e


def _config_file_error(error: BaseException | None) -> ConfigError | None:
    """The ConfigError a config file raised: the innermost of the chain (config_flags
    re-raises it with its traceback as the message, absl wraps that in a flag error)."""
    found = None
    while error is not None:
        if isinstance(error, ConfigError):
            found = error
        error = error.__cause__ or error.__context__
    return found


def _config_file(argv: Sequence[str], name: str, default: str | None) -> str | None:
    """The `--<name>=<file>[:arg]` that parsing uses: the last one given, else the default."""
    given = [a.split("=", 1)[1] for a in argv if re.match(rf"^--?{re.escape(name)}=", a)]
    return given[-1] if given else default


def check_config_file(spec: str | None, name: str = "config") -> None:
    """ConfigError unless the file of `--<name>=<file>[:arg]` exists (config_flags would only
    fail later, at the config's first use, with a traceback)."""
    if not spec:
        return
    path = os.path.expanduser(spec.split(":", 1)[0])
    if not os.path.isfile(path):
        where = "is a directory" if os.path.isdir(path) else "does not exist"
        raise ConfigError(
            f"--{name}={spec}: the config file {os.path.abspath(path)} {where}. Pass an "
            f"existing file, e.g. --{name}=configs/decoder_only.py or configs/t5.py:small "
            "(configs/README.md lists them)."
        )


def _innermost(error: BaseException) -> BaseException:
    """The first exception of `error`'s chain (what the config file itself raised)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def _load_failure(value: Any) -> BaseException | None:
    """The error config_flags kept for a config file that failed to load (it hands back a
    placeholder that raises it at the config's first use), else None."""
    placeholder = getattr(config_flags.config_flags, "_ErrorConfig", None)
    if placeholder is not None and isinstance(value, placeholder):
        return object.__getattribute__(value, "_error")
    return None


def _config_file_failure(spec: str | None, name: str, error: BaseException) -> ConfigError:
    """One line for a config file that raised something other than a ConfigError."""
    inner = _innermost(error)
    lines = str(inner).strip().splitlines()
    detail = (lines[-1] if lines else "").strip()
    return ConfigError(
        f"--{name}={spec}: the config file failed with {type(inner).__name__}: {detail} "
        "(T5X_LIKE_TRACEBACK=1 shows where)."
    )


def define_and_parse(
    argv: list[str],
    default: str | None,
    help_string: str,
    *,
    name: str = "config",
    flag_values: flags.FlagValues = flags.FLAGS,
    help_module: str | None = None,
    known_only: bool = False,
) -> tuple[Any, list[str]]:
    """Defines `--<name>` (a locked config file flag) for `argv`, then parses all flags
    (only those defined, with `known_only`).

    `help_module`: a module whose --help lists the flag (a script's: absl names the main
    module by argv[0]).

    Returns:
      (the flag's holder, the arguments left after parsing).

    Raises:
      ConfigError: an override of a field the schema does not have, a value that does not
        parse as the field's type, or a config file's own error (e.g. an unknown preset).
      flags.Error: any other flag problem, as absl reports it.
    """
    check_overrides(argv, name)
    spec = _config_file(argv, name, default)
    check_config_file(spec, name)
    try:
        holder = config_flags.DEFINE_config_file(
            name, default, help_string, flag_values=flag_values, lock_config=True, sys_argv=argv
        )
        if help_module:
            flag_values.register_key_flag_for_module(help_module, flag_values[name])
        rest = flag_values(argv, known_only=known_only)
    except flags.IllegalFlagValueError as e:
        cause = _config_file_error(e)
        if cause is not None:
            raise ConfigError(f"--{name}={spec}: {cause}") from e
        if str(e).startswith(f"flag --{name}."):
            raise ConfigError(
                f"{e}. Give a value of the same type as the field's default ({_FIELDS_HINT})."
            ) from e
        if str(e).startswith(f"flag --{name}="):
            raise _config_file_failure(spec, name, e) from e
        raise
    except flags.Error:
        raise
    except Exception as e:  # A config file's own error that absl does not wrap (RuntimeError).
        raise _config_file_failure(spec, name, e) from e
    failure = _load_failure(holder.value)
    if failure is not None:
        raise _config_file_failure(spec, name, failure) from failure
    return holder, rest


def _fail(error: Exception) -> None:
    """Ends the script with status 1: a ConfigError as its one line, another flag error as
    absl reports it."""
    if os.environ.get("T5X_LIKE_TRACEBACK") == "1":
        traceback.print_exception(error)
    if isinstance(error, ConfigError):
        sys.stderr.write(f"ERROR (ConfigError): {error}\n")
    else:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n")
        sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def _exit_status_of_help(status: int) -> NoReturn:
    """absl's help flags (--help, --helpshort, --helpfull, --helpxml) end the program through
    `absl.app._exit_before_main(1)`; asking for help is no failure, so they exit 0."""
    sys.exit(0 if status == 1 else status)


def config_actions(argv: list[str], load: Callable[[], Any], help_module: str) -> None:
    """Defines --help_config and --print_config (listed in `help_module`'s --help) and, when
    `argv` asks for one, does it and exits 0; `load()` gives the resolved config. Runs before
    the script's other flags are checked, so neither needs --workdir. Also makes absl's help
    flags exit 0 (every script that parses flags through this module calls it)."""
    # absl documents _exit_before_main as its hook "to enable overrides"; only the help
    # flags and --only_check_flags (status 0) call it.
    app._exit_before_main = _exit_status_of_help
    early = flags.FlagValues()
    for flag, help_string in _ACTION_HELP.items():
        if flag not in flags.FLAGS:
            flags.DEFINE_bool(flag, False, help_string)
        flags.FLAGS.register_key_flag_for_module(help_module, flags.FLAGS[flag])
        flags.DEFINE_bool(flag, False, help_string, flag_values=early)
    early(argv, known_only=True)
    if early[_HELP_CONFIG].value:
        print(config_lib.field_help())
        sys.exit(0)
    if early[_PRINT_CONFIG].value:
        try:
            cfg = load()
        except (ConfigError, flags.Error) as e:
            _fail(e)
        print(config_lib.to_json(cfg))
        sys.exit(0)


def parse_flags(argv: list[str]) -> list[str]:
    """`app.run`'s flags_parser for a script without --config: absl's own parsing, with its
    help flags exiting 0."""
    app._exit_before_main = _exit_status_of_help
    return app.parse_flags_with_usage(argv)


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

    def _load_alone(self, argv: list[str]) -> Any:
        """The config of `argv`, parsing no other flag (for --print_config)."""
        holder, _ = define_and_parse(
            argv, self.default, "", name=self.name, flag_values=flags.FlagValues(), known_only=True
        )
        return holder.value

    def parse(self, argv: list[str]) -> list[str]:
        """`app.run`'s flags_parser: bad overrides and flags print one line and exit 1;
        --help_config and --print_config print and exit 0."""
        config_actions(argv, lambda: self._load_alone(argv), argv[0])
        try:
            self._holder, rest = define_and_parse(
                argv, self.default, self.help_string, name=self.name, help_module=argv[0]
            )
        except (ConfigError, flags.Error) as e:
            _fail(e)
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


# How long a failed script waits for its background threads before it exits anyway.
EXIT_GRACE_S = 10.0


def exit_without_hanging(code: int, grace_s: float = EXIT_GRACE_S) -> NoReturn:
    """Exits with `code` once the other non-daemon threads have ended, or after `grace_s`.

    After a failed async save, Orbax's background threads wait for a commit signal that never
    comes, and the interpreter joins non-daemon threads at exit forever; a failed run must end
    (with its error status) instead of hanging.
    """
    deadline = time.monotonic() + grace_s
    main = threading.main_thread()
    others = [t for t in threading.enumerate() if t is not main and not t.daemon]
    for thread in others:
        # The base class's join: Orbax's thread subclasses raise from theirs on a timeout.
        threading.Thread.join(thread, max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        sys.stderr.write(
            f"Exiting without waiting for {len(stuck)} stuck background thread(s) "
            f"({', '.join(stuck[:3])}).\n"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main_with_clear_errors(main: Any) -> Any:
    """Wraps a script's `main`: an error whose message names the fix ends the script with that
    one message and exit status 1; T5X_LIKE_TRACEBACK=1 shows the traceback as well. Any other
    error shows its traceback. Either way the script exits 1 within `EXIT_GRACE_S`, whatever
    background threads are left."""

    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except KeyboardInterrupt:
            # A second Ctrl-C (the first one stops gracefully): one line, no traceback from
            # this thread or the background ones, and the shell's status for SIGINT.
            sys.stderr.write(
                "Aborted by a second Ctrl-C: no final checkpoint; relaunching the same command "
                "resumes from the last one on disk.\n"
            )
            exit_without_hanging(130, grace_s=2.0)
        except Exception as e:
            user_error = isinstance(e, _user_errors())
            if not user_error or os.environ.get("T5X_LIKE_TRACEBACK") == "1":
                traceback.print_exc()
            if user_error:
                sys.stderr.write(f"ERROR ({type(e).__name__}): {e}\n")
            exit_without_hanging(1)

    return wrapped
