"""Command-line flags of the scripts that work on a training run's workdir (eval, infer).

`--workdir` names the run; `--config` defaults to the run's own `config.json` (through
configs/saved_run.py), and either way `--config.<section>.<field>=value` overrides any field.
The default of `--config` depends on `--workdir`, and config_flags applies overrides to the
default while parsing, so `--workdir` is read first and `--config` defined after it.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from absl import flags

from t5x_like import storage
from t5x_like.cli import ConfigFlag
from t5x_like.errors import ConfigError
from t5x_like.experiment.restore import checkpoint_dir
from t5x_like.workdir import read_saved_config

SAVED_RUN_CONFIG = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "configs", "saved_run.py")
)
CONFIG_HELP = (
    "Config file (configs/*.py[:arg]); default: the --workdir's own config.json "
    f"({SAVED_RUN_CONFIG}:<workdir>). Override any field with --config.<section>.<field>=value, "
    "e.g. --config.mesh.data=1 --config.mesh.tensor=8."
)


class WorkdirConfig:
    """`--workdir` (required) and `--config`, defined when the flags are parsed."""

    def __init__(self, workdir_help: str):
        self.workdir = flags.DEFINE_string("workdir", None, workdir_help)
        flags.mark_flag_as_required("workdir")
        self._config: Any = None

    @property
    def config(self) -> Any:
        """The parsed config (a ConfigDict), overrides applied."""
        return self._config.value

    def parse(self, argv: list[str]) -> list[str]:
        """`app.run`'s flags_parser: defines --config with the workdir's default, then parses."""
        early = flags.FlagValues()
        flags.DEFINE_string("workdir", None, "", flag_values=early)
        early(argv, known_only=True)
        default = None
        if early.workdir:
            workdir = storage.resolve(early.workdir)  # A local path or gs:// / s3:// URL.
            try:
                # A bucket out of reach is one line here, not a listing retried for minutes;
                # the scripts write their reports into the workdir, so writing is probed too.
                storage.check_reachable(workdir)
                checkpoint_dir(workdir)
                if not any(re.match(r"^--?config=", a) for a in argv):
                    # The default config is this file: a damaged one is named, in one line.
                    read_saved_config(
                        storage.join(workdir, "config.json"),
                        "Restore it from a copy of the run, or pass the run's config file "
                        "with --config=configs/<file>.py and its --config.<field> overrides.",
                    )
            except (FileNotFoundError, ConfigError) as e:
                sys.exit(f"Error: {e}")
            default = f"{SAVED_RUN_CONFIG}:{workdir}"
        # List --workdir in the script's own --help (absl names the main module by argv[0]);
        # ConfigFlag lists --config there and makes a misspelt override a one-line error.
        flags.FLAGS.register_key_flag_for_module(argv[0], flags.FLAGS["workdir"])
        self._config = ConfigFlag(default, CONFIG_HELP)
        return self._config.parse(argv)
