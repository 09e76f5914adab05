"""Hugging Face Gemma (1) <-> our `DecoderOnlyTransformer`: the `GEMMA` family table.

Gemma is LLaMA's architecture (same tensor names; see `t5x_like.interop.llama`) with a GeGLU-tanh
MLP (`gelu_pytorch_tanh`, our `geglu`), token embeddings multiplied by sqrt(d_model) (our
`scale_embeddings`), a head_dim of its own (256 where d_model / heads is smaller), a tied head,
and RMSNorms that compute x * (1 + w): HF stores w, we store the scale 1 + w (import adds 1,
export subtracts it; the sum is what both compute in float32). Gemma 2 / 3 (soft-capping,
post-norms, local/global layers) are gemma2.py and gemma3.py.

    params = import_gemma("path/to/hf_checkpoint", config_from_hf("path/to/hf_checkpoint"))
"""

from __future__ import annotations

from typing import Any

from t5x_like.interop import llama
from t5x_like.layers.config import TransformerConfig


def gemma_values(hf: dict[str, Any], act_key: str = "hidden_act") -> dict[str, Any]:
    """The `TransformerConfig` fields of a Gemma config (Gemma 2 / 3 add theirs), whose
    activation is `act_key` (what transformers' modeling reads: Gemma 1's `hidden_act`, Gemma
    2 / 3's `hidden_activation`; the other one where it is absent)."""
    for key in ("attention_bias", "use_bidirectional_attention"):
        if hf.get(key):
            raise ValueError(f"{key}=True is not supported for Gemma.")
    other = "hidden_activation" if act_key == "hidden_act" else "hidden_act"
    act = hf.get(act_key) or hf.get(other) or "gelu_pytorch_tanh"
    if act_key == "hidden_act" and act == "gelu":
        # Gemma 1's released configs say "gelu" meaning the tanh GELU; transformers' GemmaConfig
        # rewrites it to gelu_pytorch_tanh, and so do we.
        act = "gelu_pytorch_tanh"
    if act not in llama.GATED_ACTIVATIONS:
        raise ValueError(
            f"{act_key}={act!r} is not supported: only {sorted(llama.GATED_ACTIVATIONS)} map "
            "exactly onto our gated MLP (HF's plain 'gelu' is the erf GELU)."
        )
    hf = dict(hf, hidden_act=act)
    return dict(
        llama.llama_like_values({"tie_word_embeddings": True, **hf}),
        scale_embeddings=True,
    )


def gemma_hf_values(config: TransformerConfig) -> dict[str, Any]:
    """The config.json fields of a Gemma config."""
    values = llama.llama_like_hf_values(config)
    return {**values, "hidden_activation": values["hidden_act"], "attention_bias": False}


# What Gemma's architecture requires beyond the LLaMA-like layout (Gemma 2 / 3 start from it).
GEMMA_LAYOUT = {
    "use_bias": False,
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
    "scale_embeddings": True,
    "tie_embeddings": True,
}

GEMMA = llama.llama_like_family(
    "Gemma",
    "gemma",
    "GemmaForCausalLM",
    gemma_values,
    gemma_hf_values,
    GEMMA_LAYOUT,
    norm_offset=1.0,
)

config_from_hf = GEMMA.config_from_hf
hf_config_dict = GEMMA.hf_config_dict
hf_config_from = GEMMA.hf_config_from
import_gemma = GEMMA.import_weights
export_gemma = GEMMA.export_weights
save_hf_checkpoint = GEMMA.save_hf_checkpoint
