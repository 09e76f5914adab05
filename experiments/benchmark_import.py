r"""Peak host memory and time of an HF import: the in-memory path vs the streaming one.

  python experiments/benchmark_import.py [--dir=/tmp/import_bench] [--width_divisor=4] \
      [--devices=8] [--scan_layers] [--out=import.json]

Writes (once; kept in --dir) a synthetic sharded safetensors checkpoint with Llama-3-8B's layer
structure at reduced width: 32 layers, 32 query / 8 KV heads, SwiGLU, vocab 128256, untied head,
d_model 4096 / --width_divisor (and the MLP and head widths with it), bfloat16, in
`model-0000i-of-0000n.safetensors` shards of about --shard_mib with a
`model.safetensors.index.json`, as the Hub's checkpoints are. Then imports it, each variant in a
fresh process on --devices fake CPU devices with params sharded over fsdp (as
`convert_checkpoint.py --from_hf` places them):

  in_memory  `LLAMA.import_weights` (the whole state dict, converted on the host), then
             `jax.device_put` onto the shardings;
  streaming  `t5x_like.interop.streaming.stream_params`: each device's shard read on its own.

and prints each one's seconds and peak RSS (`resource.getrusage(...).ru_maxrss`), the RSS just
before the import (JAX, the traced model shapes) and the host overhead: peak - before - params.
On CPU the "devices" are host memory too: the float32 params on them (params MiB) are part of
every variant's peak; what the streaming path saves is the host copy of the model. Each
variant also prints a checksum of its params (they must agree).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from t5x_like.cli import main_with_clear_errors, parse_flags

_DIR = flags.DEFINE_string("dir", "/tmp/import_bench", "Where the synthetic checkpoint lives.")
_DIVISOR = flags.DEFINE_integer(
    "width_divisor", 4, "Llama-3-8B's widths (d_model, MLP, head_dim) divided by this."
)
_SHARD_MIB = flags.DEFINE_integer("shard_mib", 384, "Target size of one safetensors shard.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Fake CPU devices (the fsdp axis).")
_SCAN = flags.DEFINE_bool("scan_layers", False, "Import into the scanned layout.")
_VARIANTS = flags.DEFINE_list("variants", ["in_memory", "streaming"], "What to run.")
_VARIANT = flags.DEFINE_string("variant", None, "Internal: run one variant in this process.")
_OUT = flags.DEFINE_string("out", None, "Also write the results as JSON here.")

LLAMA3_8B = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    vocab_size=128256,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    max_position_embeddings=8192,
    hidden_act="silu",
    tie_word_embeddings=False,
)


def hf_config(divisor: int) -> dict:
    """Llama-3-8B's config.json with widths divided by `divisor`."""
    return dict(
        LLAMA3_8B,
        hidden_size=4096 // divisor,
        intermediate_size=14336 // divisor,
        head_dim=128 // divisor,
    )


def write_checkpoint(directory: str, divisor: int, shard_mib: int) -> None:
    """The synthetic checkpoint: bfloat16 tensors in layer order, shards of ~`shard_mib`,
    generated and written one shard at a time."""
    import ml_dtypes

    from t5x_like.interop import common
    from t5x_like.interop.llama import LLAMA

    hf = hf_config(divisor)
    config = LLAMA.config_from_hf(hf)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    rules = LLAMA.weight_rules(config, False)
    groups, current, size = [], [], 0
    for rule in rules:
        nbytes = 2 * int(np.prod(rule.hf_shape))
        if current and size + nbytes > shard_mib << 20:
            groups.append(current)
            current, size = [], 0
        current.append(rule)
        size += nbytes
    groups.append(current)
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        shard = {
            r.hf_key: (rng.standard_normal(r.hf_shape, np.float32) * 0.02).astype(
                ml_dtypes.bfloat16
            )
            for r in group
        }
        common.save_safetensors(shard, os.path.join(directory, name))
        weight_map.update(dict.fromkeys(shard, name))
        del shard
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _current_rss_mib() -> float:
    """Resident memory now (Linux), the baseline the import adds to."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(variant: str, directory: str, scan_layers: bool, devices: int) -> dict:
    """One import, in this (fresh) process; its seconds, peak RSS and params checksum."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from t5x_like import partitioning
    from t5x_like.interop import common, streaming
    from t5x_like.interop.llama import LLAMA

    config = LLAMA.config_from_hf(directory, scan_layers=scan_layers)
    mesh = partitioning.make_mesh({"data": 1, "fsdp": devices, "tensor": 1})
    target = LLAMA.target
    boxed = jax.eval_shape(
        target.module(config).init, jax.random.key(0), *common.int_inputs(*target.init_shapes)
    )["params"]
    shardings = partitioning.params_shardings(boxed, mesh, partitioning.PRESETS["fsdp"])
    flat_shardings = traverse_util.flatten_dict(shardings)
    targets = traverse_util.unflatten_dict(
        {
            p: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=flat_shardings[p])
            for p, x in common.flatten_params(boxed).items()
        }
    )
    params_bytes = sum(4 * int(np.prod(t.shape)) for t in jax.tree.leaves(targets))
    before = _current_rss_mib()
    start = time.perf_counter()
    stats = None
    if variant == "in_memory":
        host = LLAMA.import_weights(directory, config)
        params = jax.device_put(host, jax.tree.map(lambda t: t.sharding, targets))
        del host
    elif variant == "streaming":
        stats = streaming.ReadStats()
        params = streaming.stream_params(LLAMA, directory, config, targets, stats=stats)
    else:
        raise app.UsageError(f"--variant={variant!r}: one of in_memory, streaming.")
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    peak = _peak_rss_mib()
    checksum = sum(float(jnp.sum(x)) for x in jax.tree.leaves(params))  # Same order in both.
    return dict(
        variant=variant,
        seconds=round(seconds, 2),
        peak_rss_mib=round(peak),
        rss_before_mib=round(before),
        params_mib=round(params_bytes / 2**20),
        bytes_read_mib=None if stats is None else round(stats.bytes_read / 2**20),
        checksum=checksum,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    directory = os.path.abspath(os.path.expanduser(_DIR.value))
    if _VARIANT.value is not None:
        result = run_variant(_VARIANT.value, directory, _SCAN.value, _DEVICES.value)
        print("RESULT " + json.dumps(result))
        return
    if not os.path.isfile(os.path.join(directory, "model.safetensors.index.json")):
        print(f"Writing the synthetic checkpoint to {directory} ...", flush=True)
        write_checkpoint(directory, _DIVISOR.value, _SHARD_MIB.value)
    files = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
    sizes = [os.path.getsize(os.path.join(directory, f)) for f in files]
    print(
        f"Checkpoint: {len(files)} shards, {sum(sizes) / 2**20:.0f} MiB on disk "
        f"(largest shard {max(sizes) / 2**20:.0f} MiB); {_DEVICES.value} CPU devices, "
        f"scan_layers={_SCAN.value}."
    )
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={_DEVICES.value}",
        JAX_PLATFORMS="cpu",
    )
    results = []
    for variant in _VARIANTS.value:
        args = [
            sys.executable,
            os.path.abspath(__file__),
            f"--variant={variant}",
            f"--dir={directory}",
            f"--devices={_DEVICES.value}",
            f"--scan_layers={_SCAN.value}",
        ]
        proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"Error: the {variant} run failed: {proc.stderr.strip()[-2000:]}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    print(
        f"{'variant':<10} {'seconds':>8} {'peak RSS MiB':>13} {'RSS before':>11} "
        f"{'params MiB':>11} {'overhead MiB':>13} {'read MiB':>9}"
    )
    for r in results:
        read = "-" if r["bytes_read_mib"] is None else r["bytes_read_mib"]
        overhead = r["peak_rss_mib"] - r["rss_before_mib"] - r["params_mib"]
        print(
            f"{r['variant']:<10} {r['seconds']:>8} {r['peak_rss_mib']:>13} "
            f"{r['rss_before_mib']:>11} {r['params_mib']:>11} {overhead:>13} {read:>9}"
        )
    checksums = {r["checksum"] for r in results}
    print("checksums agree" if len(checksums) == 1 else f"CHECKSUMS DIFFER: {checksums}")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)
    if len(checksums) != 1:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main_with_clear_errors(main), flags_parser=parse_flags)
