r"""Pretrains or fine-tunes a model from a config file; reruns resume from the workdir.

  python experiments/train.py --config=configs/decoder_only.py --workdir=/tmp/run
  python experiments/train.py --workdir=/tmp/small --config.model.num_layers=2 \
      --config.train.steps=50  # any config field can be overridden like this

Writes into --workdir: config.json (the resolved config), checkpoints/<step>/, metrics.jsonl and
TensorBoard event files under tensorboard/.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from t5x_like.log_setup import setup_logging
from t5x_like.training import trainer

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "decoder_only.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.normpath(_DEFAULT_CONFIG),
    "Experiment config file (a configs/*.py with get_config()); override any field with "
    "--config.<section>.<field>=value.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and config.json; reused to resume."
)
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    setup_logging()
    trainer.train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
