r"""T5 encoder-decoder: span-corruption pretraining on the embedded corpus, and the T5 sizes.

    --config=configs/t5.py              tiny T5 v1.1, runs on a CPU in minutes (the default)
    --config=configs/t5.py:base         T5 v1.1 base (published dimensions; any size below)
    --config=configs/t5.py:small,v1_0   T5 v1.0 layout (ReLU MLP, LM head tied to the embedding)
    --config=configs/t5.py:tiny,vanilla the original Transformer (sinusoidal, post-norm, ReLU)

Sizes: tiny, small, base, large, xl, xxl. Every field can still be overridden on the command
line, e.g. `--config.model.num_layers=2 --config.data.inputs_len=256`.
"""

from ml_collections import config_dict

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


def model_config(size: str = "tiny", variant: str = "v1_1") -> config_dict.ConfigDict:
    """The `model` section: T5 v1.1 at `size`, changed by `variant`."""
    if size not in SIZES:
        raise ValueError(f"Unknown T5 size {size!r}; choose one of {sorted(SIZES)}.")
    if variant not in VARIANTS:
        raise ValueError(f"Unknown T5 variant {variant!r}; choose one of {sorted(VARIANTS)}.")
    m = config_dict.ConfigDict()
    m.family = "encoder_decoder"
    m.vocab_size = config_dict.placeholder(int)  # None: the vocabulary's, rounded up to 128.
    m.num_decoder_layers = config_dict.placeholder(int)  # None: as many as the encoder.
    m.num_kv_heads = config_dict.placeholder(int)
    m.activation = "geglu"  # T5 v1.1's gated-GELU.
    m.norm = "rmsnorm"  # T5's LayerNorm has no mean subtraction and no bias.
    m.norm_eps = 1e-6
    m.norm_position = "pre"
    m.position = "relative"
    m.relative_attention_num_buckets = 32
    m.relative_attention_max_distance = 128
    m.scale_attention_logits = False
    m.max_len = 2048  # Only used by learned positions.
    m.rope_theta = 10_000.0
    m.tie_embeddings = False
    m.scale_tied_logits = True  # Tied head: logits * d_model**-0.5 (GPT-2: False).
    m.use_bias = False
    m.dropout_rate = 0.0  # T5 v1.1 pretrains without dropout; fine-tuning uses 0.1.
    # Mixed precision: dtype="bfloat16" computes in bf16; params, gradients and optimizer state
    # stay in param_dtype (keep float32); the loss is always computed in float32.
    m.dtype = "float32"
    m.param_dtype = "float32"
    m.scan_layers = False
    m.remat = "none"  # Recompute activations in the backward pass: layers/config.py policies.
    m.attention_impl = "einsum"  # "cudnn" is not wired for the relative position bias.
    m.update(SIZES[size])
    m.update(VARIANTS[variant])
    return m


def get_config(arg: str = "tiny") -> config_dict.ConfigDict:
    size, _, variant = arg.partition(",")
    c = config_dict.ConfigDict()
    c.name = f"t5_{size}_{variant or 'v1_1'}_span_corruption"
    c.seed = 0
    c.model = model_config(size, variant or "v1_1")

    c.data = config_dict.ConfigDict()
    c.data.task = "span_corruption"  # span_corruption | prefix_lm | seq2seq
    c.data.dataset = "t5x_like_corpus"
    c.data.data_dir = config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.text_key = "text"
    c.data.inputs_key = "inputs"  # seq2seq: the records' input and target text features.
    c.data.targets_key = "targets"
    c.data.inputs_prefix = ""
    c.data.seq_len = config_dict.placeholder(int)  # Decoder-only rows; unused here.
    # Encoder and decoder tokens per row. With span corruption the raw chunk is sized so that
    # its corrupted inputs fill inputs_len; targets_len must hold its targets (T5: 512 -> 114).
    c.data.inputs_len = 128
    c.data.targets_len = 32
    c.data.noise_density = 0.15
    c.data.mean_noise_span_length = 3.0
    c.data.pack = True
    c.data.vocab_path = config_dict.placeholder(str)
    # Dataset whose train split trains the vocabulary (None: data.dataset).
    c.data.vocab_dataset = config_dict.placeholder(str)
    c.data.vocab_size = 2048
    c.data.extra_ids = 100  # Sentinels <extra_id_0..99>, as in T5's vocabulary.
    # Logical data shards of the training batch (train.batch_size must be a multiple): the
    # batches depend on (seed, step, num_shards) only, so any process count dividing it
    # trains on the same data and resumes from the same checkpoint. None: the largest of
    # 8, 4, 2, 1 dividing the batch size; 1: the single-pipeline order of older versions.
    c.data.num_shards = config_dict.FieldReference(8, field_type=int)

    c.train = config_dict.ConfigDict()
    c.train.steps = 400
    c.train.batch_size = 16
    c.train.microbatches = 1  # Gradient accumulation over this many micro-batches per step.
    c.train.log_every = 25
    c.train.eval_every = 100
    c.train.eval_batches = 16
    c.train.eval_at_start = True
    c.train.decode_batches = 0  # Batches greedily decoded per eval for text metrics.
    c.train.checkpoint_every = 100
    c.train.max_to_keep = 3
    c.train.async_checkpoint = True
    # A non-finite loss or grad norm: "stop" the run (the bad state is never saved) or
    # "skip" that update (optax.apply_if_finite; changes the optimizer-state layout).
    c.train.nan_policy = "stop"
    # Resume even if model-shaping fields differ from the workdir's config.json.
    c.train.allow_config_change = False
    c.train.z_loss = 1e-4
    c.train.label_smoothing = 0.0
    # > 0: the LM head and the loss run fused, this many positions of every row at a time, so
    # the [batch, length, vocab] logits never exist at once (training/chunked_loss.py; same
    # loss and gradients up to float rounding). 0: all logits, then the loss.
    c.train.loss_chunk_size = 0
    c.train.init_from = config_dict.placeholder(str)
    c.train.init_step = config_dict.placeholder(int)
    c.train.compilation_cache_dir = "~/.cache/t5x_like/xla"

    c.optimizer = config_dict.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 40
    c.optimizer.end_lr_fraction = 0.1
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-8
    c.optimizer.grad_clip_norm = 1.0

    c.mesh = config_dict.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Multi-slice TPU (or multi-process) runs: the data axis spans this many slices joined by
    # the slow data-center network; fsdp and tensor stay inside a slice.
    c.mesh.num_slices = 1

    c.partitioning = config_dict.ConfigDict()
    # dp | fsdp | tp | fsdp_tp | custom: which parameters and activations are sharded over which
    # mesh axes (t5x_like/partitioning.py PRESETS). fsdp_tp: batch over (data, fsdp), embed over
    # fsdp, heads/kv_heads/mlp/vocab over tensor. "custom" uses partitioning.rules below instead:
    # (logical axis, mesh axes) pairs, e.g. (("batch", ("data", "fsdp")), ("embed", "fsdp"), ...).
    c.partitioning.preset = "fsdp_tp"
    c.partitioning.rules = config_dict.placeholder(tuple)
    return c
