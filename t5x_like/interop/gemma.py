"""Hugging Face Gemma (1) <-> our `DecoderOnlyTransformer`: the `GEMMA` family table.

Gemma is LLaMA's architecture (same tensor names; see `t5x_like.interop.llama`) with a GeGLU-tanh
MLP (`gelu_pytorch_tanh`, our `geglu`), token embeddings multiplied by sqrt(d_model) (our
`scale_embeddings`), a head_dim of its own (256 where d_model / heads is smaller), a tied head,
and RMSNorms that compute x * (1 + w): HF stores w, we store the scale 1 + w (import adds 1,
export subtracts it; the sum is what both compute in float32). Gemma 2 / 3 (soft-capping,
post-norms, local/global layers) are other model_types, not converted.

    params = import_gemma("path/to/hf_checkpoint", config_from_hf("path/to/hf_checkpoint"))
"""

from __future__ import annotations

from typing import Any

from t5x_like.interop import llama
from t5x_like.layers.config import TransformerConfig


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    for key in ("attention_bias", "use_bidirectional_attention"):
        if hf.get(key):
            raise ValueError(f"{key}=True is not supported for Gemma.")
    # transformers reads hidden_act; configs of the first release also name hidden_activation.
    hf = dict(hf, hidden_act=hf.get("hidden_act") or hf.get("hidden_activation"))
    hf["hidden_act"] = hf["hidden_act"] or "gelu_pytorch_tanh"
    return dict(
        llama.llama_like_values({"tie_word_embeddings": True, **hf}),
        scale_embeddings=True,
    )


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    values = llama.llama_like_hf_values(config)
    return {**values, "hidden_activation": values["hidden_act"], "attention_bias": False}


GEMMA = llama.llama_like_family(
    "Gemma",
    "gemma",
    "GemmaForCausalLM",
    _config_values,
    _hf_values,
    {
        "use_bias": False,
        "qkv_bias": False,
        "qk_norm": False,
        "sliding_window": None,
        "scale_embeddings": True,
        "tie_embeddings": True,
    },
    norm_offset=1.0,
)

config_from_hf = GEMMA.config_from_hf
hf_config_dict = GEMMA.hf_config_dict
hf_config_from = GEMMA.hf_config_from
import_gemma = GEMMA.import_weights
export_gemma = GEMMA.export_weights
save_hf_checkpoint = GEMMA.save_hf_checkpoint
