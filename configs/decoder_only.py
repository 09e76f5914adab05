"""Default decoder-only pretraining: a small LLaMA-style model on the embedded corpus.

RoPE, RMSNorm, SwiGLU, no biases, tied embeddings: the schema's defaults (t5x_like/config.py;
`--help_config` lists every field). Sized to finish in about 5 minutes on 2 CPU cores. Every
field can be overridden from the command line, e.g.
`--config.model.num_layers=2 --config.train.steps=50`.
"""

from ml_collections import config_dict

from t5x_like import config


def get_config() -> config_dict.ConfigDict:
    c = config.base_config()
    c.data.num_shards = 8  # Fixed, not derived from the batch: resuming needs the same value.
    return c
