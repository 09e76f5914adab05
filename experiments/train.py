r"""Pretrains or fine-tunes a model from a config file; reruns resume from the workdir.

  python experiments/train.py --config=configs/decoder_only.py --workdir=/tmp/run
  python experiments/train.py --workdir=/tmp/small --config.model.num_layers=2 \
      --config.train.steps=50  # any config field can be overridden like this

Writes into --workdir: config.json (the resolved config), checkpoints/<step>/, metrics.jsonl and
TensorBoard event files under tensorboard/. --workdir may be a local path or a gs://bucket/run or
s3://bucket/run URL (the `cloud` extra; credentials from the environment, see BUILD.md); on an
object store the metrics are per-interval objects under metrics/ (t5x_like/storage.py).
"""

import os

import jax
from absl import app, flags, logging

from t5x_like import distributed, host_memory
from t5x_like.cli import ConfigFlag, main_with_clear_errors
from t5x_like.experiment import trainer, validation
from t5x_like.log_setup import setup_logging
from t5x_like.tools import plotting

# The multi-process flags (t5x_like/distributed.py) belong in this script's --help too.
flags.adopt_module_key_flags(distributed)
_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "decoder_only.py")

# Defined while parsing (ConfigFlag.parse): a misspelt override is a one-line error.
_CONFIG = ConfigFlag(
    os.path.normpath(_DEFAULT_CONFIG),
    "Experiment config file (configs/*.py[:arg], see configs/README.md); default: "
    "configs/decoder_only.py. Override any field with --config.<section>.<field>=value.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Directory (local, gs://bucket/path or s3://bucket/path) for checkpoints, metrics and "
    "config.json; reused to resume.",
)
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Before anything touches JAX devices: the host allocator (XLA:CPU runs), then a
    # multi-process job must be joined.
    host_memory.configure()
    distributed.initialize_from_flags()
    setup_logging()
    # Before anything is built: the config, memory for the model's state, a usable workdir.
    validation.check_before_training(
        _CONFIG.value, _WORKDIR.value, jax.device_count(), jax.process_count()
    )
    trainer.train(_CONFIG.value, _WORKDIR.value)
    _write_curves(_WORKDIR.value)


def _write_curves(workdir: str) -> None:
    """`<workdir>/curves.png` (process 0); a plotting problem never fails a finished run."""
    if jax.process_index() != 0:
        return
    try:
        path = plotting.write_training_curves(workdir)
    except (OSError, ValueError) as e:
        logging.warning("Could not plot the training curves: %s", e)
    else:
        logging.info("Training curves: %s", path)


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=_CONFIG.parse)
