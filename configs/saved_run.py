r"""The config a training run saved (`<workdir>/config.json`), as an overridable ConfigDict.

    --config=configs/saved_run.py:/path/to/workdir   (experiments/eval.py's default)

JSON lists become tuples (as in configs/*.py); nulls become placeholders of the field's schema
type (t5x_like/config.py; any type for a field the schema does not know), so every field can
still be overridden as `--config.<section>.<field>=value`. Fields an older config.json lacks
take the schema's defaults.
"""

import json

from ml_collections import config_dict

from t5x_like import config, storage


def _tuples(value):
    """JSON arrays back to tuples, as the config files write them (nulls inside stay None)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _field(value, path: str):
    """The config field at dotted `path`; a null keeps its place as a typed placeholder."""
    if isinstance(value, dict):
        return config_dict.ConfigDict(
            {k: _field(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        )
    if value is None:
        known = config.FIELDS.get(path)
        return config_dict.placeholder(known.type if known else object)
    return _tuples(value)


def _fill_defaults(cfg: config_dict.ConfigDict) -> None:
    """Adds the schema fields (and sections) `cfg` lacks, at their defaults."""
    for path, field in config.FIELDS.items():
        section, _, name = path.rpartition(".")
        if section and section not in cfg:
            cfg[section] = config_dict.ConfigDict()
        holder = cfg[section] if section else cfg
        if name not in holder:
            holder[name] = _field(field.default, path)


def get_config(workdir: str) -> config_dict.ConfigDict:
    path = storage.join(storage.resolve(workdir), "config.json")  # Local or gs:// / s3://.
    if not storage.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: {workdir!r} is not a training workdir "
            "(experiments/train.py writes config.json and checkpoints/ there)."
        )
    cfg = _field(json.loads(storage.read_text(path)), "")
    _fill_defaults(cfg)
    return cfg
