"""Helpers shared by the tests: tiny configs and synthetic batches."""

import contextlib
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from t5x_like.data import packing

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str = "decoder_only", arg: str | None = None):
    """Loads configs/<name>.py's get_config(arg) the way config_flags does."""
    spec = importlib.util.spec_from_file_location(
        f"configs_{name}", REPO / "configs" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def load_script(name: str):
    """experiments/<name>.py as a module, loaded once per process: a script defines absl flags,
    which a second load would define twice."""
    key = f"experiments_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "experiments" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def _shrink(cfg, overrides):
    cfg.train.update(batch_size=8, steps=10, log_every=1, eval_every=0, checkpoint_every=5)
    cfg.train.compilation_cache_dir = ""
    cfg.optimizer.warmup_steps = 2
    for path, value in overrides.items():
        section, field = path.rsplit(".", 1) if "." in path else ("", path)
        target = cfg
        for part in filter(None, section.split(".")):
            target = target[part]
        target[field] = value
    return cfg


def tiny_config(**overrides):
    """The default config shrunk to a model that trains in milliseconds on CPU.

    Overrides are dotted paths, e.g. tiny_config(**{"model.num_layers": 1}).
    """
    cfg = load_config()
    cfg.model.update(
        vocab_size=128, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64
    )
    cfg.data.seq_len = 16
    return _shrink(cfg, overrides)


def corpus_config(data_dir, **overrides):
    """`tiny_config` on the embedded corpus in `data_dir` (the `corpus_dir` fixture), with the
    model's vocabulary size resolved from its cached 256-piece vocabulary."""
    cfg = tiny_config(**overrides)
    cfg.model.vocab_size = None
    cfg.data.data_dir = data_dir
    cfg.data.vocab_size = 256
    return cfg


def tiny_train_args(workdir, data_dir, steps, cache_dir="", **overrides):
    """experiments/train.py and its flags for a tiny decoder-only run on the corpus (a 1-layer,
    32-wide model, batch 8 x 32 tokens, logging every step, no eval); `overrides` are
    further config fields, e.g. tiny_train_args(..., **{"model.dropout_rate": 0.1})."""
    fields = {
        "data.data_dir": data_dir,
        "data.vocab_size": 256,
        "data.seq_len": 32,
        "model.d_model": 32,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.mlp_dim": 64,
        "train.batch_size": 8,
        "train.steps": steps,
        "train.log_every": 1,
        "train.eval_every": 0,
        "train.compilation_cache_dir": cache_dir,
        **overrides,
    }
    flags = [f"--config.{name}={value}" for name, value in fields.items()]
    return [str(REPO / "experiments" / "train.py"), f"--workdir={workdir}", *flags]


def tiny_t5_config(**overrides):
    """configs/t5.py (T5 v1.1) shrunk like `tiny_config`: 16 encoder / 8 decoder tokens."""
    cfg = load_config("t5")
    cfg.model.update(vocab_size=128, d_model=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64)
    cfg.data.update(task="seq2seq", inputs_len=16, targets_len=8)
    return _shrink(cfg, overrides)


def synthetic_batch(
    batch_size: int, seq_len: int, vocab_size: int, seed: int = 0, packed: bool = True
) -> dict[str, np.ndarray]:
    """A random batch in the pipeline's format; when packed, each row holds 2-3 documents."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, vocab_size, size=(batch_size, seq_len), dtype=np.int32)
    segment_ids = np.zeros((batch_size, seq_len), np.int32)
    positions = np.zeros((batch_size, seq_len), np.int32)
    for row in range(batch_size):
        used = seq_len - int(rng.integers(0, seq_len // 4))
        cuts = sorted(rng.choice(np.arange(2, used - 1), size=2, replace=False)) if packed else []
        bounds = [0, *cuts, used]
        for seg, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True), start=1):
            segment_ids[row, a:b] = seg
            positions[row, a:b] = np.arange(b - a)
    targets = np.where(segment_ids > 0, targets, 0)
    inputs = np.where(positions == 0, 0, np.roll(targets, 1, axis=1)).astype(np.int32)
    inputs = np.where(segment_ids > 0, inputs, 0)
    return {
        "inputs": inputs,
        "targets": targets,
        "segment_ids": segment_ids,
        "positions": positions,
        "weights": (segment_ids > 0).astype(np.float32),
    }


def synthetic_encdec_batch(
    batch_size: int, inputs_len: int, targets_len: int, vocab_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A random packed encoder-decoder batch: 3 examples per row, segment k on both sides."""
    enc = synthetic_batch(batch_size, inputs_len, vocab_size, seed=seed)
    dec = synthetic_batch(batch_size, targets_len, vocab_size, seed=seed + 1)
    assert (enc["segment_ids"].max(1) == dec["segment_ids"].max(1)).all()
    side = lambda rows: (rows["targets"], rows["segment_ids"], rows["positions"])  # noqa: E731
    return packing.encoder_decoder_features(side(enc), side(dec))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def processes(
    commands: Sequence[Sequence[str]], log_paths: Sequence[os.PathLike], devices_each: int
) -> Iterator[list[subprocess.Popen]]:
    """Starts each command in the repo, on `devices_each` fake CPU devices, its output to its
    log file; yields the processes and kills any still running on the way out."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_each}"
    procs = []
    try:
        for command, log_path in zip(commands, log_paths, strict=True):
            with open(log_path, "w") as log:  # The child keeps its own descriptor.
                procs.append(
                    subprocess.Popen(
                        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
