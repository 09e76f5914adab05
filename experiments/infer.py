r"""Generates text from a training run's checkpoint, for prompts given inline or in a file.

  python experiments/infer.py --workdir=workdir/decoder_only --prompt="The list type"
  python experiments/infer.py --workdir=workdir/t5_summarize --prompts_file=prompts.txt \
      --strategy=beam --num_beams=4
  python experiments/infer.py --workdir=/tmp/run --prompt="..." --strategy=sample \
      --temperature=0.8 --top_p=0.9 --seed=3 --config.mesh.data=1 --config.mesh.tensor=8

Decoder-only runs continue each prompt; encoder-decoder runs read it as the encoder's input
(after the config's data.inputs_prefix, e.g. "summarize: "). Prompts come from --prompt
(repeatable) and --prompts_file (one per line, or JSONL objects with a "prompt" key). Results
are printed and written as JSONL ({"prompt", "output", "score", "tokens"}) to --output
(default <workdir>/infer/step_<N>.jsonl). Only the params are restored, onto this run's mesh.
The config is the run's own config.json unless --config names another file; any field can be
overridden with --config.<section>.<field>=value. In a multi-process job (the flags of
t5x_like/distributed.py) every process decodes its rows of each batch and process 0 writes.
"""

import os
import sys

import jax
from absl import app, flags

from t5x_like import decoding, distributed, host_memory
from t5x_like.cli import main_with_clear_errors
from t5x_like.experiment import decode_eval, restore
from t5x_like.experiment.inference import generate_text, read_prompts
from t5x_like.log_setup import setup_logging
from t5x_like.workdir_flags import WorkdirConfig

# The multi-process flags (t5x_like/distributed.py) belong in this script's --help too.
flags.adopt_module_key_flags(distributed)
_RUN = WorkdirConfig("A training workdir (config.json and checkpoints/) to generate with.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for more.")
_PROMPTS_FILE = flags.DEFINE_string(
    "prompts_file", None, "A file of prompts: one per line, or .jsonl with a 'prompt' key."
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSONL output path (default: <workdir>/infer/step_<N>.jsonl)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.", lower_bound=1)
_STRATEGY = flags.DEFINE_enum("strategy", "greedy", decoding.STRATEGIES, "Decoding strategy.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 32, "Tokens to generate at most per prompt (EOS included).", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling probability mass (1.0: off).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams for --strategy=beam.", lower_bound=1)
_LENGTH_PENALTY = flags.DEFINE_float(
    "length_penalty", 0.6, "Beam search: GNMT length penalty alpha (0: none)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed gives the same samples.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Before anything touches JAX devices: the host allocator (XLA:CPU runs), then a
    # multi-process job must be joined.
    host_memory.configure()
    distributed.initialize_from_flags()
    setup_logging()
    try:
        config = decoding.DecodeConfig(
            strategy=_STRATEGY.value,
            max_new_tokens=_MAX_NEW_TOKENS.value,
            temperature=_TEMPERATURE.value,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
            num_beams=_NUM_BEAMS.value,
            length_penalty=_LENGTH_PENALTY.value,
            seed=_SEED.value,
        )
        prompts = read_prompts(_PROMPT.value, _PROMPTS_FILE.value)
        run = restore.restore_run(_RUN.config, _RUN.workdir.value, step=_STEP.value)
        results = generate_text(run, prompts, config, batch_size=_BATCH_SIZE.value)
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError.
        sys.exit(f"Error: {e}")
    if jax.process_index() != 0:  # Every process has all the results; one writes them.
        return
    output = _OUTPUT.value or os.path.join(run.workdir, "infer", f"step_{run.step}.jsonl")
    decode_eval.write_jsonl(output, results)
    for result in results:
        print(f"{result['prompt']!r} -> {result['output']!r} (score {result['score']:.3f})")
    print(f"Wrote {len(results)} results to {output}")


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=_RUN.parse)
