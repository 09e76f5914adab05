r"""Evaluates a training run's checkpoint on this machine's devices, on any mesh that fits them.

  python experiments/eval.py --workdir=/tmp/run                 # latest step, eval split
  python experiments/eval.py --workdir=/tmp/run --step=200 --split=train --num_batches=20
  python experiments/eval.py --workdir=/tmp/t5 --decode_batches=4 \
      --config.mesh.data=1 --config.mesh.tensor=8               # any config field, like this

The config is the run's own config.json (configs/saved_run.py:<workdir>) unless --config names
another file; either way `--config.<section>.<field>=value` overrides any field, e.g. the mesh
(`mesh.data/fsdp/tensor`, whose product must be this run's device count) or data.data_dir.
Only the params are restored (never the optimizer state), straight into this mesh's shardings.

Reports loss, cross-entropy, perplexity and token accuracy over the split, plus accuracy, exact
match, BLEU and ROUGE-L of decoded text with --decode_batches > 0 (encoder-decoder runs, and
decoder-only SFT runs: each eval prompt's generation against its completion; the config's
train.decode_strategy / decode_stop / ... say how to decode, e.g.
--config.train.decode_stop="('\n',)"), and a
fine-tuned encoder-only run's task metrics (task_accuracy, task_f1_macro, task_mcc,
task_entity_f1, task_exact_match, ...: t5x_like/experiment/task_eval.py). The
JSON report goes to --output (default <workdir>/eval/step_<N>.json), decodes next to it.
In a multi-process job (the flags of t5x_like/distributed.py) every process evaluates its
share of each batch and process 0 writes the report.
"""

import sys

import jax
from absl import app, flags

from t5x_like import distributed, host_memory
from t5x_like.cli import main_with_clear_errors
from t5x_like.errors import ConfigError
from t5x_like.experiment import evaluator
from t5x_like.log_setup import setup_logging
from t5x_like.workdir_flags import WorkdirConfig

# The multi-process flags (t5x_like/distributed.py) belong in this script's --help too.
flags.adopt_module_key_flags(distributed)
_RUN = WorkdirConfig("A training workdir (config.json and checkpoints/) to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
_SPLIT = flags.DEFINE_string(
    "split", None, "Dataset split to evaluate (default: the config's data.eval_split)."
)
_NUM_BATCHES = flags.DEFINE_integer(
    "num_batches",
    0,
    "Batches of train.batch_size rows to evaluate; 0: the whole split.",
    lower_bound=0,
)
_DECODE_BATCHES = flags.DEFINE_integer(
    "decode_batches",
    None,
    "Batches to decode for accuracy/exact match/BLEU/ROUGE-L of the text (encoder-decoder "
    "runs, decoder-only data.task=sft runs); default: the config's train.decode_batches.",
    lower_bound=0,
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "Path of the JSON report (default: <workdir>/eval/step_<N>.json)."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Before anything touches JAX devices: the host allocator (XLA:CPU runs), then a
    # multi-process job must be joined.
    host_memory.configure()
    distributed.initialize_from_flags()
    setup_logging()
    try:
        report = evaluator.evaluate_checkpoint(
            _RUN.config,
            _RUN.workdir.value,
            step=_STEP.value,
            split=_SPLIT.value,
            num_batches=_NUM_BATCHES.value,
            decode_batches=_DECODE_BATCHES.value,
            output=_OUTPUT.value,
        )
    except (FileNotFoundError, ConfigError) as e:
        sys.exit(f"Error: {e}")
    if jax.process_index() == 0:  # Every process computed the same report.
        print(evaluator.format_summary(report))


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=_RUN.parse)
