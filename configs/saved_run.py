r"""The config a training run saved (`<workdir>/config.json`), as an overridable ConfigDict.

    --config=configs/saved_run.py:/path/to/workdir   (experiments/eval.py's default)

JSON lists become tuples (as in configs/*.py) and nulls become placeholders that accept any
value, so every field can still be overridden as `--config.<section>.<field>=value`; a field
saved as null takes a Python literal (`--config.train.init_step=3`), else the text as a string.
"""

import json
import os

from ml_collections import config_dict


def _tuples(value):
    """JSON arrays back to tuples, as the config files write them (nulls inside stay None)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _field(value):
    """A config field; a null keeps its place as a placeholder of any type (overridable)."""
    if isinstance(value, dict):
        return config_dict.ConfigDict({k: _field(v) for k, v in value.items()})
    if value is None:
        return config_dict.placeholder(object)
    return _tuples(value)


def get_config(workdir: str) -> config_dict.ConfigDict:
    path = os.path.join(os.path.expanduser(workdir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: {workdir!r} is not a training workdir "
            "(experiments/train.py writes config.json and checkpoints/ there)."
        )
    with open(path, encoding="utf-8") as f:
        return _field(json.load(f))
