r"""Benchmark sizes for experiments/benchmark.py: synthetic data, no dataset or vocabulary.

    --config=configs/benchmark.py:cpu      decoder-only, 6 x 512, seq 256, batch 8, float32
    --config=configs/benchmark.py:125m     LLaMA-style 134M (12 x 768), seq 1024, bf16
    --config=configs/benchmark.py:1b       TinyLlama-1.1B dims (22 x 2048, GQA 4 kv heads), bf16
    --config=configs/benchmark.py:8b       LLaMA-3-8B dims (32 x 4096, GQA 8 kv heads), bf16
    --config=configs/benchmark.py:t5_base  T5 v1.1 base (configs/t5.py), 512 -> 114 tokens
    --config=configs/benchmark.py:t5_large T5 v1.1 large, FSDP + full remat

The decoder-only sizes are configs/decoder_only.py's sizes (one table, `decoder_only.SIZES`:
125m is its small, 1b and 8b its 1b and 8b, with its large-model layout), cpu its tiny model
widened; the T5 sizes are configs/t5.py's. Vocabularies: 32000 (LLaMA-1/2's SentencePiece
size), 128256 for 8b (LLaMA-3's), 32128 for T5. "bf16" means bfloat16 compute with float32
params and optimizer state (mixed precision). The big sizes shard with FSDP over all devices
(mesh.fsdp=-1), scan their layers (compile time independent of depth) and rematerialise each
layer in the backward pass. Every field stays overridable: `--config.train.batch_size=16`.
"""

import os

from ml_collections import config_dict

from t5x_like import config

_HERE = os.path.dirname(os.path.abspath(__file__))

# (configs/decoder_only.py size, vocab_size, seq_len, batch_size); the model's shape comes from
# that size (decoder_only.SIZES), the vocabulary size from the model it is named after.
DECODER_SIZES = {
    "cpu": ("tiny", 32000, 256, 8),
    "125m": ("small", 32000, 1024, 32),
    "1b": ("1b", 32000, 2048, 64),
    "8b": ("8b", 128256, 4096, 256),
}
# The CPU speed target: the tiny model widened to 6 x 512 (41.6M parameters with its vocab).
_CPU_DIMS = dict(d_model=512, num_layers=6, num_heads=8, mlp_dim=2048)
T5_SIZES = {"t5_base": "base", "t5_large": "large"}


def _benchmark_defaults(c: config_dict.ConfigDict) -> None:
    """Settings no benchmark wants: evaluation, checkpoints, the persistent compilation cache
    (it would hide the compile time being measured)."""
    c.train.steps = 1000  # Only shapes the learning-rate schedule.
    c.train.eval_every = 0
    c.train.eval_at_start = False
    c.train.checkpoint_every = 1000
    c.train.compilation_cache_dir = ""
    c.optimizer.warmup_steps = 10


def _decoder_only(name: str) -> config_dict.ConfigDict:
    size, vocab, seq_len, batch = DECODER_SIZES[name]
    c = config.load_file(os.path.join(_HERE, "decoder_only.py"), size)
    if name == "cpu":
        c.model.update(_CPU_DIMS)
    c.model.update(vocab_size=vocab, max_len=seq_len)
    c.data.seq_len = seq_len
    c.train.batch_size = batch
    if name == "cpu":
        # The fused LM head + loss in 64-position chunks (train.loss_chunk_size): ~15% less
        # step time here, where the 32000-vocab head is 38% of the FLOPs.
        c.train.loss_chunk_size = 64
        return c  # float32, tied embeddings, data parallel: configs/decoder_only.py's layout.
    # The sizes below 1b train in float32 and tied in configs/decoder_only.py; measured here
    # in the large-model precision and layout (not sharded: they fit one device).
    c.model.update(dtype="bfloat16", tie_embeddings=False, scan_layers=True)
    return c


def _t5(size: str) -> config_dict.ConfigDict:
    c = config.load_file(os.path.join(_HERE, "t5.py"), size)
    c.model.update(vocab_size=32128, dtype="bfloat16", scan_layers=True)
    # T5 pretraining rows: 512 input tokens -> 114 targets at 15% noise, 3-token spans.
    c.data.update(inputs_len=512, targets_len=114)
    c.train.batch_size = 128
    if size == "large":
        c.model.remat = "full"
        c.mesh.update(data=1, fsdp=-1)
    return c


def get_config(name: str = "cpu") -> config_dict.ConfigDict:
    config.preset({**DECODER_SIZES, **T5_SIZES}, name, "benchmark size")
    c = _t5(T5_SIZES[name]) if name in T5_SIZES else _decoder_only(name)
    c.name = f"benchmark_{name}"
    _benchmark_defaults(c)
    return c
