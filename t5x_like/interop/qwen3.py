"""Hugging Face Qwen3 <-> our `DecoderOnlyTransformer`: the `QWEN3` family table.

Qwen3 is LLaMA's architecture (same tensor names; see `t5x_like.interop.llama`) with an RMSNorm
over each query and key head before RoPE (`q_norm` / `k_norm`, our `qk_norm`), no biases, and
a head_dim of its own. Its `attention_bias` (biases on the four attention projections but not
the MLP) and per-layer sliding window are not implemented and are refused.

    params = import_qwen3("path/to/hf_checkpoint", config_from_hf("path/to/hf_checkpoint"))
"""

from __future__ import annotations

from typing import Any

from t5x_like.interop import llama
from t5x_like.layers.config import TransformerConfig


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    llama.no_sliding_window(hf, "Qwen3")
    if hf.get("attention_bias"):
        raise ValueError(
            "attention_bias=True is not supported for Qwen3: our biases go on every dense layer "
            "(use_bias) or on q/k/v alone (qkv_bias), not on the attention projections alone."
        )
    return dict(llama.llama_like_values(hf), qk_norm=True)


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    return {
        **llama.llama_like_hf_values(config),
        "attention_bias": False,
        "use_sliding_window": False,
    }


QWEN3 = llama.llama_like_family(
    "Qwen3",
    "qwen3",
    "Qwen3ForCausalLM",
    _config_values,
    _hf_values,
    {"use_bias": False, "qkv_bias": False, "qk_norm": True, "sliding_window": None},
)

config_from_hf = QWEN3.config_from_hf
hf_config_dict = QWEN3.hf_config_dict
hf_config_from = QWEN3.hf_config_from
import_qwen3 = QWEN3.import_weights
export_qwen3 = QWEN3.export_weights
save_hf_checkpoint = QWEN3.save_hf_checkpoint
