r"""Encoder-only (BERT) masked-LM pretraining on the embedded corpus, and the BERT sizes.

    --config=configs/encoder_only.py            a CPU-sized BERT (2 layers, d_model 128; minutes)
    --config=configs/encoder_only.py:base       BERT-base dimensions (any size below)
    --config=configs/encoder_only.py:tiny --config.data.sentence_pair=nsp \
        --config.model.encoder_head=pretraining  MLM + next-sentence prediction

Sizes: tiny (2L/128), mini (4L/256), small (4L/512), medium (8L/512), base (12L/768),
large (24L/1024): the published BERT dimensions (Turc et al. 2019 for the compact ones).
BERT's layout: learned absolute positions, post-LayerNorm (eps 1e-12), erf GELU MLP of
4 * d_model, biases everywhere, token types, MLM head tied to the token embedding. Only what
differs from the schema's defaults (t5x_like/config.py, `--help_config`) is set here.
"""

from ml_collections import config_dict

from t5x_like import config

SIZES = {
    "tiny": dict(d_model=128, num_heads=2, mlp_dim=512, num_layers=2),
    "mini": dict(d_model=256, num_heads=4, mlp_dim=1024, num_layers=4),
    "small": dict(d_model=512, num_heads=8, mlp_dim=2048, num_layers=4),
    "medium": dict(d_model=512, num_heads=8, mlp_dim=2048, num_layers=8),
    "base": dict(d_model=768, num_heads=12, mlp_dim=3072, num_layers=12),
    "large": dict(d_model=1024, num_heads=16, mlp_dim=4096, num_layers=24),
}


def get_config(size: str = "tiny") -> config_dict.ConfigDict:
    dims = config.preset(SIZES, size, "size")
    c = config.base_config()
    c.name = f"bert_{size}_mlm"
    c.model.update(
        family="encoder_only",
        activation="gelu_exact",  # BERT's GELU is the erf one.
        norm="layernorm",
        norm_eps=1e-12,
        norm_position="post",
        position="learned",
        max_len=512,
        use_bias=True,
        tie_embeddings=True,
        scale_tied_logits=False,
        type_vocab_size=2,
        encoder_head="mlm",
        **dims,
    )
    c.data.task = "mlm"
    c.data.seq_len = 128
    c.data.extra_ids = 3  # [CLS], [SEP], [MASK].
    c.data.num_shards = 8  # Fixed, not derived from the batch: resuming needs the same value.
    c.train.update(steps=300, batch_size=32, eval_every=100, checkpoint_every=300)
    c.train.z_loss = 0.0
    c.optimizer.update(learning_rate=1e-3, warmup_steps=30, weight_decay=0.01, b2=0.999)
    return c
