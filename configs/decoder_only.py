r"""Decoder-only pretraining on the embedded corpus, and the decoder-only sizes.

    --config=configs/decoder_only.py         tiny: 4 x 256, trains on 2 CPU cores in ~5 minutes
    --config=configs/decoder_only.py:small   12 x 768 (GPT-2 small's shape, LLaMA-style blocks)
    --config=configs/decoder_only.py:8b      LLaMA-3-8B dimensions (any size below)

Sizes: tiny, small, medium, 1b, 3b, 8b (`SIZES`; configs/benchmark.py builds its decoder-only
sizes from the same table). Every size is LLaMA-style: RoPE, RMSNorm, SwiGLU, no biases, with
small-std embeddings whose tied logits are scaled by d_model**-0.5 (model.embed_init_std=0.3,
model.scale_tied_logits) and GPT-2's residual output projections scaled by 1/sqrt(2 *
num_layers) (model.scale_residual_init), so that a fresh model's loss is ln(vocab) at any
depth: the schema's defaults (t5x_like/config.py, `--help_config` lists every field). The
vocabulary is the data's (data.vocab_size / data.vocab_path; model.vocab_size None follows
it). 1b and up do not fit one host in float32: bfloat16 compute, an untied LM head, scanned
layers, full remat, FSDP over all devices. Every field can be overridden from the command
line, e.g.
`--config.model.num_layers=2 --config.train.steps=50`.
"""

from ml_collections import config_dict

from t5x_like import config

# Shapes of the model section. tiny is the schema's default model; small is GPT-2 small's
# 12 x 768 (12 heads) with a SwiGLU MLP of 8/3 x d_model; medium GPT-2 medium's 24 x 1024;
# 1b TinyLlama-1.1B's; 3b Llama-3.2-3B's; 8b Llama-3-8B's (GQA, RoPE base 500000).
SIZES = {
    "tiny": dict(d_model=256, num_layers=4, num_heads=4, num_kv_heads=None, mlp_dim=768),
    "small": dict(d_model=768, num_layers=12, num_heads=12, num_kv_heads=None, mlp_dim=2048),
    "medium": dict(d_model=1024, num_layers=24, num_heads=16, num_kv_heads=None, mlp_dim=2816),
    "1b": dict(d_model=2048, num_layers=22, num_heads=32, num_kv_heads=4, mlp_dim=5632),
    "3b": dict(
        d_model=3072,
        num_layers=28,
        num_heads=24,
        num_kv_heads=8,
        mlp_dim=8192,
        rope_theta=500_000.0,
        norm_eps=1e-5,
        tie_embeddings=True,  # As Llama-3.2-3B (the large layout unties the others).
    ),
    "8b": dict(
        d_model=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        mlp_dim=14336,
        rope_theta=500_000.0,
        norm_eps=1e-5,
    ),
}
# Sizes that need the large-model layout (`large_layout`).
LARGE = ("1b", "3b", "8b")


def large_layout(c: config_dict.ConfigDict) -> None:
    """bfloat16 compute (float32 params and optimizer state), an untied LM head, scanned layers
    (compile time independent of depth), full remat, params sharded over all devices (FSDP)."""
    c.model.update(dtype="bfloat16", tie_embeddings=False, scan_layers=True, remat="full")
    c.mesh.update(data=1, fsdp=-1)


def get_config(size: str = "tiny") -> config_dict.ConfigDict:
    dims = config.preset(SIZES, size, "decoder-only size")
    c = config.base_config()
    if size != "tiny":
        c.name = f"decoder_only_{size}"
    if size in LARGE:
        large_layout(c)
    c.model.update(dims)
    c.data.num_shards = 8  # Fixed, not derived from the batch: resuming needs the same value.
    return c
