"""Hyperparameters of the shared Transformer layers, as a frozen (hashable) dataclass.

Flax modules take this object as an attribute, so it must be immutable; `from_config_dict`
builds it from the `model` section of an experiment's ml_collections config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ACTIVATIONS = ("relu", "gelu", "gelu_exact", "silu", "swiglu", "geglu", "reglu")
GATED_ACTIVATIONS = ("swiglu", "geglu", "reglu")
NORMS = ("rmsnorm", "layernorm")
# "relative": T5's bucketed relative position bias, added to the attention logits.
POSITIONS = ("rope", "learned", "sinusoidal", "relative", "none")
# "pre": x + f(norm(x)) with a final norm (T5, GPT-2, LLaMA); "post": norm(x + f(x)) (the
# original Transformer).
NORM_POSITIONS = ("pre", "post")
DTYPES = ("float32", "bfloat16", "float16")
# Rematerialisation (activation checkpointing) of each layer, by jax.checkpoint_policies name:
#   none                              keep every activation for the backward pass (no remat);
#   full = nothing_saveable           recompute each layer from its input;
#   dots_saveable                     keep the outputs of all matmuls (incl. attention's);
#   dots = dots_with_no_batch_dims_saveable  keep the weight matmuls' outputs only;
#   everything_saveable               remat boundary only (saves all; for experiments);
#   save_qkv_proj                     keep only the query/key/value projections (checkpoint_name
#                                     tags in attention.py), recompute the rest.
# The attention core: "einsum" is xla_cpu.dot_product_attention (XLA, any device, the
# decoding path); "cudnn" is jax.nn.dot_product_attention's cuDNN fused (flash) kernel for
# training and prefill on NVIDIA GPUs, in bfloat16/float16.
ATTENTION_IMPLS = ("einsum", "cudnn")
REMAT_POLICIES = (
    "none",
    "full",
    "dots",
    "nothing_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
    "save_qkv_proj",
)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Shape and behaviour of a Transformer stack (shared by both model families)."""

    vocab_size: int = 4096
    d_model: int = 256
    num_layers: int = 4  # Decoder-only: the stack; encoder-decoder: the encoder.
    num_decoder_layers: int | None = None  # Encoder-decoder only; None: num_layers.
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: as many as num_heads (MHA); 1: MQA; else GQA.
    head_dim: int | None = None  # None: d_model // num_heads.
    mlp_dim: int = 1024
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    norm_position: str = "pre"  # One of NORM_POSITIONS.
    position: str = "rope"
    max_len: int = 2048  # Size of the learned position table.
    rope_theta: float = 10_000.0
    # Llama 3's frequency-dependent RoPE scaling (HF rope_type "llama3"): low frequencies
    # divided by the factor, high ones kept, a smooth blend between; None: unscaled.
    rope_scaling_factor: float | None = None
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    # T5's relative position buckets: half exact, half logarithmic up to max_distance.
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    # Divide attention logits by sqrt(head_dim). T5 does not; it folds that factor into the
    # query projection's initialisation instead.
    scale_attention_logits: bool = True
    tie_embeddings: bool = True
    # Tied LM head: multiply logits by d_model**-0.5 (T5 v1.0, our default); GPT-2 does not.
    scale_tied_logits: bool = True
    use_bias: bool = False
    qkv_bias: bool = False  # Biases on the query/key/value projections alone (Qwen2).
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3).
    scale_embeddings: bool = False  # Token embeddings times sqrt(d_model) (Gemma).
    # Each token attends to itself and at most sliding_window - 1 earlier tokens (Mistral);
    # None: to all of them.
    sliding_window: int | None = None
    # With sliding_window: every global_every-th layer (the last of each group of global_every)
    # attends to all tokens and the others within the window (Gemma 2: 2, Gemma 3: 6); None:
    # every layer within the window.
    global_every: int | None = None
    # RoPE base of the sliding-window layers (Gemma 3's local layers), which then take no RoPE
    # scaling; None: every layer uses rope_theta (and the rope scaling).
    rope_local_theta: float | None = None
    # Gemma 2's tanh soft-capping, cap * tanh(x / cap), of the attention logits (before the mask)
    # and of the LM head's logits; None: uncapped.
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # Attention logits scaled by query_pre_attn_scalar**-0.5 instead of head_dim**-0.5 (Gemma 2 /
    # 3); None: head_dim.
    query_pre_attn_scalar: float | None = None
    # Pre-norm layers also normalise each branch's output before adding it to the residual
    # stream (Gemma 2 / 3's post_attention_layernorm and post_feedforward_layernorm).
    post_branch_norm: bool = False
    dropout_rate: float = 0.0
    dtype: str = "float32"  # Compute dtype.
    param_dtype: str = "float32"
    # One scanned layer (params stacked on a leading "layers" axis) instead of num_layers
    # unrolled ones: compile time independent of depth; the layout large runs use.
    scan_layers: bool = False
    remat: str = "none"  # One of REMAT_POLICIES.
    attention_impl: str = "einsum"  # One of ATTENTION_IMPLS.

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def rope_scaling(self) -> tuple[float, float, float, int] | None:
        """(factor, low_freq_factor, high_freq_factor, original_max_len) of Llama 3's RoPE
        scaling, or None when unscaled."""
        if self.rope_scaling_factor is None:
            return None
        return (
            self.rope_scaling_factor,
            self.rope_low_freq_factor,
            self.rope_high_freq_factor,
            self.rope_original_max_len,
        )

    def is_local_layer(self, index: int) -> bool:
        """Whether layer `index` attends within `sliding_window` (the others attend to all)."""
        if self.sliding_window is None:
            return False
        return self.global_every is None or (index + 1) % self.global_every != 0

    @property
    def mixed_layers(self) -> bool:
        """Whether sliding-window (local) and global layers alternate (`global_every`)."""
        return self.sliding_window is not None and self.global_every not in (None, 1)

    @property
    def qkv_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_config_dict(cls, model_cfg: Any, **overrides: Any) -> TransformerConfig:
        """Builds the dataclass from the fields of a config section that it knows."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dict(model_cfg).items() if k in names}
        values.update(overrides)
        return cls(**values)
