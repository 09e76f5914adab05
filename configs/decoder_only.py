"""Default decoder-only pretraining: a small LLaMA-style model on the embedded corpus.

Sized to finish in about 5 minutes on 2 CPU cores. Every field can be overridden from the
command line, e.g. `--config.model.num_layers=2 --config.train.steps=50`.
"""

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.name = "decoder_only_small"
    c.seed = 0

    c.model = config_dict.ConfigDict()
    c.model.family = "decoder_only"
    # None: the vocabulary's size rounded up to a multiple of 128.
    c.model.vocab_size = config_dict.placeholder(int)
    c.model.d_model = 256
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = config_dict.placeholder(int)  # None: num_heads (MHA).
    c.model.head_dim = config_dict.placeholder(int)  # None: d_model // num_heads.
    c.model.mlp_dim = 768
    c.model.activation = "swiglu"  # relu | gelu | silu | swiglu | geglu | reglu
    c.model.norm = "rmsnorm"  # rmsnorm | layernorm
    c.model.norm_eps = 1e-6
    c.model.position = "rope"  # rope | learned | sinusoidal | none
    c.model.max_len = 2048
    c.model.rope_theta = 10_000.0
    c.model.tie_embeddings = True
    c.model.scale_tied_logits = True  # Tied head: logits * d_model**-0.5 (GPT-2: False).
    c.model.use_bias = False
    c.model.dropout_rate = 0.0
    # Mixed precision: dtype="bfloat16" computes activations and matmuls in bf16 while params,
    # gradients and optimizer state stay in param_dtype (keep float32); the loss is always f32.
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.scan_layers = False  # True: one nn.scan over stacked layer params ("layers" axis).
    # Recompute activations in the backward pass: none | full | dots | dots_saveable |
    # dots_with_no_batch_dims_saveable | nothing_saveable | everything_saveable | save_qkv_proj
    # (layers/config.py REMAT_POLICIES).
    c.model.remat = "none"
    # Attention core: "einsum" (XLA; any device) or "cudnn" (jax.nn.dot_product_attention's
    # fused kernel: NVIDIA GPUs, model.dtype bfloat16/float16).
    c.model.attention_impl = "einsum"

    c.data = config_dict.ConfigDict()
    c.data.task = "causal_lm"  # Decoder-only rows; see configs/t5.py for encoder-decoder tasks.
    c.data.dataset = "t5x_like_corpus"  # Any TFDS dataset prepared as array_record.
    c.data.data_dir = config_dict.placeholder(str)  # None: TFDS's default (~/tensorflow_datasets).
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.text_key = "text"
    c.data.seq_len = 128
    c.data.pack = True
    c.data.vocab_path = config_dict.placeholder(str)  # None: train one on the dataset, cached.
    # Dataset whose train split trains the vocabulary (None: data.dataset).
    c.data.vocab_dataset = config_dict.placeholder(str)
    c.data.vocab_size = 2048
    c.data.extra_ids = 0  # T5 sentinel ids appended to the vocabulary.
    # Logical data shards of the training batch (train.batch_size must be a multiple): the
    # batches depend on (seed, step, num_shards) only, so any process count dividing it
    # trains on the same data and resumes from the same checkpoint. None: the largest of
    # 8, 4, 2, 1 dividing the batch size; 1: the single-pipeline order of older versions.
    c.data.num_shards = config_dict.FieldReference(8, field_type=int)

    c.train = config_dict.ConfigDict()
    c.train.steps = 400
    c.train.batch_size = 16  # Global, across all processes.
    # Gradient accumulation: the batch is split into this many micro-batches inside the step;
    # one optimizer update on their summed gradients (same result as the whole batch at once).
    c.train.microbatches = 1
    c.train.log_every = 25
    c.train.eval_every = 100
    c.train.eval_batches = 16  # Per eval; 0 means the whole split.
    c.train.eval_at_start = True  # Also evaluate the freshly initialised model (step 0).
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
    # Fine-tuning: start from the params (not the optimizer) of a checkpoint directory
    # (<workdir>/checkpoints or a workdir) at init_step (None: its latest step).
    c.train.init_from = config_dict.placeholder(str)
    c.train.init_step = config_dict.placeholder(int)
    c.train.decode_batches = 0  # Encoder-decoder only: batches greedily decoded per eval.
    # Persistent XLA compilation cache; "" disables it.
    c.train.compilation_cache_dir = "~/.cache/t5x_like/xla"

    c.optimizer = config_dict.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | adafactor | sgd
    c.optimizer.learning_rate = 3e-3
    c.optimizer.schedule = "cosine"  # cosine | rsqrt | constant
    c.optimizer.warmup_steps = 40
    c.optimizer.end_lr_fraction = 0.1
    c.optimizer.weight_decay = 0.1
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.grad_clip_norm = 1.0

    # Mesh axis sizes; one may be -1 ("all remaining devices"). Product = device count.
    c.mesh = config_dict.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Multi-slice TPU (or multi-process) runs: the data axis spans this many slices joined by
    # the slow data-center network; fsdp and tensor stay inside a slice.
    c.mesh.num_slices = 1

    # Logical axis -> mesh axes. Earlier rules win when two logical axes want the same mesh axis.
    c.partitioning = config_dict.ConfigDict()
    # dp | fsdp | tp | fsdp_tp | custom: which parameters and activations are sharded over which
    # mesh axes (t5x_like/partitioning.py PRESETS). fsdp_tp: batch over (data, fsdp), embed over
    # fsdp, heads/kv_heads/mlp/vocab over tensor. "custom" uses partitioning.rules below instead:
    # (logical axis, mesh axes) pairs, e.g. (("batch", ("data", "fsdp")), ("embed", "fsdp"), ...).
    c.partitioning.preset = "fsdp_tp"
    c.partitioning.rules = config_dict.placeholder(tuple)
    return c
