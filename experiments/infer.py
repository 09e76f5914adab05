r"""Generates text from a training run's checkpoint, for prompts given inline or in a file.

  python experiments/infer.py --workdir=workdir/decoder_only --prompt="The list type"
  python experiments/infer.py --workdir=workdir/t5_summarize --prompts_file=prompts.txt \
      --strategy=beam --num_beams=4
  python experiments/infer.py --workdir=/tmp/run --prompt="..." --strategy=sample \
      --temperature=0.8 --top_p=0.9 --seed=3 --config.mesh.data=1 --config.mesh.tensor=8

Decoder-only runs continue each prompt; encoder-decoder runs read it as the encoder's input
(after the config's data.inputs_prefix, e.g. "summarize: "). Encoder-only runs do not generate:
they fill each "[MASK]" (an MLM run), classify ("text" or "text<TAB>text_b"), tag each word
("word/TAG ...") or answer (a JSON object {"question": ..., "context": ...} per prompt), by
the run's data.task; the decoding flags do not apply. Prompts come from --prompt
(repeatable) and --prompts_file (one per line, JSONL objects with a "prompt" key, or - for
stdin); --interactive reads a prompt per line of stdin and prints its completion, until EOF:

  echo "The list type" | python experiments/infer.py --workdir=/tmp/run --prompts_file=-
  python experiments/infer.py --workdir=/tmp/run --interactive

A prompt longer than the model's context is an error unless --truncate_prompts=left/right cuts
it (with a warning). Results are printed and written as JSONL ({"prompt", "output", "score",
"tokens"}; "score" null if not finite) to --output (default <workdir>/infer/step_<N>.jsonl).
Only the params are restored, onto this run's mesh. The config is the run's own config.json
unless --config names another file; any field can be overridden with
--config.<section>.<field>=value. In a multi-process job (the flags of t5x_like/distributed.py)
every process decodes its rows of each batch and process 0 writes.
"""

import sys

import jax
from absl import app, flags

from t5x_like import decoding, distributed, host_memory, storage
from t5x_like.cli import main_with_clear_errors
from t5x_like.data import text_files
from t5x_like.experiment import decode_eval, restore
from t5x_like.experiment.inference import (
    TRUNCATE_SIDES,
    Generator,
    generate_text,
    read_prompts,
)
from t5x_like.log_setup import setup_logging
from t5x_like.workdir_flags import WorkdirConfig

# The multi-process flags (t5x_like/distributed.py) belong in this script's --help too.
flags.adopt_module_key_flags(distributed)
_RUN = WorkdirConfig("A training workdir (config.json and checkpoints/) to generate with.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for more.")
_PROMPTS_FILE = flags.DEFINE_string(
    "prompts_file",
    None,
    "A file of prompts: one per line, or .jsonl with a 'prompt' key; - reads them from stdin.",
)
_INTERACTIVE = flags.DEFINE_bool(
    "interactive",
    False,
    "Read a prompt per line of stdin, print its completion, until EOF (one process only).",
)
_TRUNCATE = flags.DEFINE_enum(
    "truncate_prompts",
    "off",
    TRUNCATE_SIDES,
    "A prompt longer than the model's context: off = error; left = keep its last tokens; "
    "right = keep its first tokens (with a warning either way).",
)
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSONL output path (default: <workdir>/infer/step_<N>.jsonl)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.", lower_bound=1)
_STRATEGY = flags.DEFINE_enum("strategy", "greedy", decoding.STRATEGIES, "Decoding strategy.")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 32, "Tokens to generate at most per prompt (EOS included).", lower_bound=1
)
_TEMPERATURE = flags.DEFINE_float(
    "temperature", 1.0, "Sampling temperature (> 0; greedy and beam ignore it)."
)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling probability mass (1.0: off).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams for --strategy=beam.", lower_bound=1)
_LENGTH_PENALTY = flags.DEFINE_float(
    "length_penalty", 0.6, "Beam search: GNMT length penalty alpha (0: none)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed gives the same samples.")


def _decode_config() -> decoding.DecodeConfig:
    return decoding.DecodeConfig(
        strategy=_STRATEGY.value,
        max_new_tokens=_MAX_NEW_TOKENS.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        top_p=_TOP_P.value,
        num_beams=_NUM_BEAMS.value,
        length_penalty=_LENGTH_PENALTY.value,
        seed=_SEED.value,
    )


def _interactive(run: restore.RestoredRun, config: decoding.DecodeConfig) -> list[dict]:
    """A prompt per line of stdin, its completion printed at once, until EOF; a line that
    cannot be decoded is reported on stderr and skipped."""
    if jax.process_count() > 1:
        raise ValueError("--interactive runs in one process: drop the multi-process flags.")
    generator = Generator(run, config, batch_size=1, truncate=_TRUNCATE.value, width_multiple=16)
    results = []
    tty = sys.stdin.isatty()  # A person typing gets a "> " prompt; a pipe gets none.
    number = 0
    while True:
        if tty:
            print("> ", end="", flush=True)
        raw = sys.stdin.buffer.readline()
        if not raw:  # EOF
            return results
        number += 1
        try:
            prompt = text_files.decode_line(raw, "<stdin>", number, what="the prompts").strip()
            if not prompt:
                continue
            (result,) = generator([prompt])
        except ValueError as e:  # A bad prompt ends nothing but itself.
            print(f"Error: {e}", file=sys.stderr, flush=True)
            continue
        results.append(result)
        print(result["output"], flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Before anything touches JAX devices: the host allocator (XLA:CPU runs), then a
    # multi-process job must be joined.
    host_memory.configure()
    distributed.initialize_from_flags()
    setup_logging()
    try:
        config = _decode_config()
        if _INTERACTIVE.value and (_PROMPT.value or _PROMPTS_FILE.value):
            raise ValueError("--interactive reads stdin: drop --prompt / --prompts_file.")
        # Before restoring: a bad prompts file fails before anything is built.
        prompts = None if _INTERACTIVE.value else read_prompts(_PROMPT.value, _PROMPTS_FILE.value)
        run = restore.restore_run(_RUN.config, _RUN.workdir.value, step=_STEP.value)
        if prompts is None:
            results = _interactive(run, config)
        else:
            results = generate_text(
                run, prompts, config, batch_size=_BATCH_SIZE.value, truncate=_TRUNCATE.value
            )
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError.
        sys.exit(f"Error: {e}")
    if jax.process_index() != 0:  # Every process has all the results; one writes them.
        return
    output = _OUTPUT.value or storage.join(run.workdir, "infer", f"step_{run.step}.jsonl")
    decode_eval.write_jsonl(output, results)
    if not _INTERACTIVE.value:
        for result in results:
            score = "n/a" if result["score"] is None else f"{result['score']:.3f}"
            print(f"{result['prompt']!r} -> {result['output']!r} (score {score})")
    print(
        f"Wrote {len(results)} results to {output}",
        file=sys.stderr if _INTERACTIVE.value else sys.stdout,
    )


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=_RUN.parse)
