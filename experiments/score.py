r"""Scores a decoder-only checkpoint by log-likelihood, as lm-evaluation-harness does.

  python experiments/score.py --workdir=/tmp/run --task=next_sentence        # built-in
  python experiments/score.py --workdir=/tmp/run --task=my_task.jsonl --step=400
  python experiments/score.py --workdir=/tmp/run --task=rolling --num_documents=50 \
      --config.mesh.data=2 --config.mesh.tensor=4                            # any mesh

Tasks: a JSONL file of multiple-choice questions, one object per line
{"context": "...", "choices": ["...", "..."], "gold": <index>}, each choice scored as the
continuation " " + choice of its context (reporting the harness's acc, acc_norm and acc_bytes);
`next_sentence`, built from the run's eval split (the true next sentence among 4); `rolling`,
the rolling log-likelihood of the eval split's documents in windows of data.seq_len tokens
(token/word/byte perplexity and bits per byte). Requests are packed several per row into
batches of one shape, so one compilation serves the task.

The config is the run's own config.json unless --config names another; any field can be
overridden with `--config.<section>.<field>=value` (the mesh, data.data_dir). The JSON report
goes to --output (default <workdir>/eval/score_step_<N>_<task>.json) and is printed.
"""

import json
import sys

import jax
from absl import app, flags

from t5x_like import distributed, host_memory
from t5x_like.cli import main_with_clear_errors
from t5x_like.errors import ConfigError
from t5x_like.experiment import scoring
from t5x_like.log_setup import setup_logging
from t5x_like.workdir_flags import WorkdirConfig

flags.adopt_module_key_flags(distributed)
_RUN = WorkdirConfig("A training workdir (config.json and checkpoints/) to score.")
_TASK = flags.DEFINE_string(
    "task",
    "next_sentence",
    "A JSONL file of multiple-choice questions (context, choices, gold per line), or a "
    f"built-in task: one of {scoring.BUILTIN_TASKS}.",
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to score (default: the latest).")
_SPLIT = flags.DEFINE_string(
    "split", None, "Split the built-in tasks read (default: the config's data.eval_split)."
)
_NUM_QUESTIONS = flags.DEFINE_integer(
    "num_questions", 100, "Questions of the built-in next_sentence task.", lower_bound=1
)
_NUM_DOCUMENTS = flags.DEFINE_integer(
    "num_documents", 20, "Documents the rolling task scores (the split's first).", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size",
    8,
    "Rows per forward pass (rounded up to a multiple of the mesh's data x fsdp).",
    lower_bound=1,
)
_SEQ_LEN = flags.DEFINE_integer(
    "seq_len",
    None,
    "Tokens per row, the rolling window and the longest request kept whole (longer ones are "
    "cut from the left); default: the config's data.seq_len.",
    lower_bound=2,
)
_DELIMITER = flags.DEFINE_string(
    "target_delimiter", " ", "Text between a question's context and each choice."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the built-in next_sentence task's choices.")
_OUTPUT = flags.DEFINE_string(
    "output",
    None,
    "Path of the JSON report (default: <workdir>/eval/score_step_<N>_<task>.json).",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure()
    distributed.initialize_from_flags()
    setup_logging()
    try:
        report = scoring.score_checkpoint(
            _RUN.config,
            _RUN.workdir.value,
            task=_TASK.value,
            step=_STEP.value,
            split=_SPLIT.value,
            num_questions=_NUM_QUESTIONS.value,
            num_documents=_NUM_DOCUMENTS.value,
            batch_size=_BATCH_SIZE.value,
            seq_len=_SEQ_LEN.value,
            delimiter=_DELIMITER.value,
            seed=_SEED.value,
            output=_OUTPUT.value,
        )
    except (FileNotFoundError, ValueError, ConfigError) as e:
        sys.exit(f"Error: {e}")
    if jax.process_index() == 0:
        summary = {k: v for k, v in report.items() if k not in ("per_question", "loglikelihoods")}
        print(json.dumps(summary, indent=2, sort_keys=True))
        print(scoring.format_summary(report))


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=_RUN.parse)
