r"""T5 encoder-decoder: span-corruption pretraining on the embedded corpus, and the T5 sizes.

    --config=configs/t5.py              tiny T5 v1.1, runs on a CPU in minutes (the default)
    --config=configs/t5.py:base         T5 v1.1 base (published dimensions; any size below)
    --config=configs/t5.py:small,v1_0   T5 v1.0 layout (ReLU MLP, LM head tied to the embedding)
    --config=configs/t5.py:tiny,vanilla the original Transformer (sinusoidal, post-norm, ReLU)

Sizes: tiny, small, base, large, xl, xxl. Only what differs from the schema's defaults
(t5x_like/config.py, `--help_config`) is set here; every field can still be overridden on the
command line, e.g. `--config.model.num_layers=2 --config.data.inputs_len=256`.
"""

from ml_collections import config_dict

from t5x_like import config

# T5 v1.1 dimensions as published (d_model, heads, head_dim, d_ff, encoder = decoder layers).
SIZES = {
    "tiny": dict(d_model=256, num_heads=4, head_dim=64, mlp_dim=512, num_layers=2),
    "small": dict(d_model=512, num_heads=6, head_dim=64, mlp_dim=1024, num_layers=8),
    "base": dict(d_model=768, num_heads=12, head_dim=64, mlp_dim=2048, num_layers=12),
    "large": dict(d_model=1024, num_heads=16, head_dim=64, mlp_dim=2816, num_layers=24),
    "xl": dict(d_model=2048, num_heads=32, head_dim=64, mlp_dim=5120, num_layers=24),
    "xxl": dict(d_model=4096, num_heads=64, head_dim=64, mlp_dim=10240, num_layers=24),
}
# Architecture variants, as changes to the T5 v1.1 model section.
VARIANTS = {
    "v1_1": {},
    "v1_0": dict(activation="relu", tie_embeddings=True),
    "vanilla": dict(
        position="sinusoidal",
        norm="layernorm",
        norm_position="post",
        activation="relu",
        tie_embeddings=True,
        scale_attention_logits=True,
    ),
}


def get_config(arg: str = "tiny") -> config_dict.ConfigDict:
    size, _, variant = arg.partition(",")
    dims = config.preset(SIZES, size, "size")
    changes = config.preset(VARIANTS, variant or "v1_1", "variant")
    c = config.base_config()
    c.name = f"t5_{size}_{variant or 'v1_1'}_span_corruption"
    c.model.update(
        family="encoder_decoder",
        activation="geglu",  # T5 v1.1's gated-GELU.
        position="relative",
        # T5 folds head_dim**-0.5 into the query projection's init instead.
        scale_attention_logits=False,
        tie_embeddings=False,
        **dims,
    )
    c.model.update(changes)

    c.data.task = "span_corruption"  # span_corruption | prefix_lm | seq2seq
    c.data.seq_len = config_dict.placeholder(int)  # Decoder-only rows; unused here.
    c.data.inputs_len = 128
    c.data.targets_len = 32
    c.data.extra_ids = 100  # Sentinels <extra_id_0..99>, as in T5's vocabulary.
    c.data.num_shards = 8  # Fixed, not derived from the batch: resuming needs the same value.

    c.optimizer.update(weight_decay=0.01, b2=0.98)
    return c
