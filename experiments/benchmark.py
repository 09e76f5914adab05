r"""Benchmarks a config on synthetic data: compile time, step time, tokens/s, MFU, memory.

  python experiments/benchmark.py --config=configs/benchmark.py:cpu           # train steps
  python experiments/benchmark.py --config=configs/benchmark.py:cpu --mode=decode \
      --decode_batch_sizes=1,32 --prompt_len=64 --max_new_tokens=64
  python experiments/benchmark.py --config=configs/benchmark.py:8b --mode=dryrun \
      --dryrun_devices=256 --device_memory_gib=16    # does an 8B model fit 256 v5e chips?
  python experiments/benchmark.py --mode=formulations --steps=4  # each XLA:CPU formulation's
      # worth: the train step with all on, each off in turn, all off (layers/xla_cpu.py)

Prints a table and writes JSON to --out (default <workdir or ./benchmark>/<name>_<mode>.json).
`--mode=dryrun --dryrun_devices=N` compiles for N fake CPU devices (re-running itself in a fresh
process if JAX is already up with other devices): XLA's CPU backend then reports each device's
memory for the mesh of the config, without allocating any parameter. Its figures are the CPU
compiler's (buffer assignment, fusion and remat choices differ a little from TPU/GPU).
"""

import json
import os
import subprocess
import sys

import jax
from absl import app, flags, logging

from t5x_like import decoding, distributed, host_memory
from t5x_like.cli import ConfigFlag, main_with_clear_errors
from t5x_like.log_setup import setup_logging
from t5x_like.tools.benchmarking import decode, formulations, report, runs

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "benchmark.py")

# The multi-process flags (t5x_like/distributed.py): a train/decode benchmark on a pod.
flags.adopt_module_key_flags(distributed)
# Defined while parsing (ConfigFlag.parse): a misspelt override is a one-line error.
_CONFIG = ConfigFlag(
    os.path.normpath(_DEFAULT_CONFIG) + ":cpu",
    "Config file (configs/benchmark.py:NAME or any experiment config with model.vocab_size "
    "set); override any field with --config.<section>.<field>=value.",
)
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "decode", "dryrun", "formulations"], "What to measure."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed train steps before the timed ones.")
_PROFILE_STEPS = flags.DEFINE_integer(
    "profile_steps",
    0,
    "train: trace this many more steps with jax.profiler and print where the op time goes.",
)
_OUT = flags.DEFINE_string("out", None, "JSON output path.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the default JSON output.")
_BATCH_SIZES = flags.DEFINE_list("decode_batch_sizes", ["1", "32"], "Decode batch sizes.")
_PROMPT_LEN = flags.DEFINE_integer(
    "prompt_len", 64, "Decode prompt tokens (encoder tokens for T5)."
)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per row.")
_STRATEGY = flags.DEFINE_enum("strategy", "greedy", list(decoding.STRATEGIES), "Decoding.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sampling top-k (0: off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sampling top-p (1: off).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 4, "Beams for --strategy=beam.")
_REPEATS = flags.DEFINE_integer("decode_repeats", 3, "Timed generate calls per batch size.")
_DRYRUN_DEVICES = flags.DEFINE_integer(
    "dryrun_devices",
    0,
    "dryrun: compile for this many fake CPU devices (0: this machine's devices).",
)
_MEMORY_GIB = flags.DEFINE_float(
    "device_memory_gib",
    16.0,
    "dryrun: memory budget per device in GiB: HBM per chip is 16 on TPU v5e, 95 on v5p, "
    "~79 on H100 80GB, ~131 on H200; JAX's GPU allocator takes 75% of it unless "
    "XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.",
)


def _use_fake_devices(count: int) -> int | None:
    """Makes this process compile for `count` fake CPU devices; when JAX's backends are already
    up with other devices, re-runs this command in a fresh process and returns its exit code."""
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
        return None
    if jax.default_backend() == "cpu" and jax.device_count() == count:
        return None
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(count))
    logging.info("JAX is already initialised; re-running in a process with %d devices.", count)
    return subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode


def _out_path(name: str, mode: str, result: dict | None = None) -> str:
    """`--out`, else `<workdir>/<name>_<mode>.json`; a dry run's name also carries its mesh and
    device count, so that dry runs of one config on several meshes keep their own files."""
    if _OUT.value:
        return _OUT.value
    directory = _WORKDIR.value or os.path.join(os.getcwd(), "benchmark")
    suffix = ""
    if mode == "dryrun" and result and "mesh" in result:
        mesh = "".join(f"{axis[0]}{size}" for axis, size in result["mesh"].items())
        suffix = f"_{mesh}_{result.get('devices', jax.device_count())}dev"
    return os.path.join(directory, f"{name}_{mode}{suffix}.json")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    mode = _MODE.value
    host_memory.configure()  # Before JAX starts its backends.
    if mode == "dryrun" and _DRYRUN_DEVICES.value > 0:
        code = _use_fake_devices(_DRYRUN_DEVICES.value)
        if code is not None:
            sys.exit(code)
    if mode != "dryrun":
        # Before anything touches JAX devices; a dry run compiles for fake devices instead.
        distributed.initialize_from_flags()
    setup_logging()
    cfg = _CONFIG.value
    if mode == "train":
        profile_dir = os.path.join(os.path.dirname(_out_path(cfg.name, mode)), "profile")
        result, rows = runs.benchmark_train(
            cfg, _STEPS.value, _WARMUP.value, _PROFILE_STEPS.value, profile_dir
        )
    elif mode == "decode":
        decode_config = decoding.DecodeConfig(
            strategy=_STRATEGY.value,
            max_new_tokens=_MAX_NEW.value,
            temperature=_TEMPERATURE.value,
            top_k=_TOP_K.value,
            top_p=_TOP_P.value,
            num_beams=_NUM_BEAMS.value,
        )
        batch_sizes = [int(b) for b in _BATCH_SIZES.value]
        result, rows = decode.benchmark_decode(
            cfg, batch_sizes, _PROMPT_LEN.value, decode_config, _REPEATS.value
        )
    elif mode == "formulations":
        result, rows = formulations.benchmark_formulations(cfg, _STEPS.value, _WARMUP.value)
    else:
        result, rows = runs.benchmark_dryrun(cfg, _MEMORY_GIB.value)
    result["jax_version"] = jax.__version__
    result["backend"] = jax.default_backend()
    result["host_malloc"] = host_memory.describe()  # Changes CPU step times by ~10%.
    rows.append(("host malloc", result["host_malloc"]))
    print(report.table(rows, f"benchmark {cfg.get('name', '')} --mode={mode}"), flush=True)
    if jax.process_index() == 0:
        path = _out_path(cfg.get("name", "benchmark"), mode, result)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True)
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=_CONFIG.parse)
