"""Hugging Face Qwen2 / Qwen2.5 <-> our `DecoderOnlyTransformer`: the `QWEN2` family table.

Qwen2 is LLaMA's architecture (same tensor names; see `t5x_like.interop.llama`) with biases on
the query, key and value projections alone (our `qkv_bias`), an untied head in the large models
and a tied one in the small ones. Its per-layer sliding window (`use_sliding_window`, off in the
released checkpoints) is not implemented and is refused.

    params = import_qwen2("path/to/hf_checkpoint", config_from_hf("path/to/hf_checkpoint"))
"""

from __future__ import annotations

from typing import Any

from t5x_like.interop import llama
from t5x_like.layers.config import TransformerConfig


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    llama.no_sliding_window(hf, "Qwen2")
    return dict(llama.llama_like_values(hf), qkv_bias=True)


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    return {**llama.llama_like_hf_values(config), "use_sliding_window": False}


QWEN2 = llama.llama_like_family(
    "Qwen2",
    "qwen2",
    "Qwen2ForCausalLM",
    _config_values,
    _hf_values,
    {"use_bias": False, "qkv_bias": True, "qk_norm": False, "sliding_window": None},
)

config_from_hf = QWEN2.config_from_hf
hf_config_dict = QWEN2.hf_config_dict
hf_config_from = QWEN2.hf_config_from
import_qwen2 = QWEN2.import_weights
export_qwen2 = QWEN2.export_weights
save_hf_checkpoint = QWEN2.save_hf_checkpoint
