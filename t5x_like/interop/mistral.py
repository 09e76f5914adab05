"""Hugging Face Mistral <-> our `DecoderOnlyTransformer`: the `MISTRAL` family table.

Mistral is LLaMA's architecture (same tensor names; see `t5x_like.interop.llama`) without biases
and with sliding-window attention: each token attends to itself and `sliding_window - 1` earlier
tokens (`sliding_window: null` in later versions: all of them). Our `sliding_window` applies the
same window in training, evaluation and KV-cache decoding.

    params = import_mistral("path/to/hf_checkpoint", config_from_hf("path/to/hf_checkpoint"))
"""

from __future__ import annotations

from typing import Any

from t5x_like.interop import llama
from t5x_like.layers.config import TransformerConfig


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"{key}=True is not supported: Mistral's projections have no bias.")
    window = hf.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise ValueError(f"sliding_window={window!r} must be a positive integer or null.")
    return dict(llama.llama_like_values(hf), sliding_window=window)


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    return {**llama.llama_like_hf_values(config), "sliding_window": config.sliding_window}


MISTRAL = llama.llama_like_family(
    "Mistral",
    "mistral",
    "MistralForCausalLM",
    _config_values,
    _hf_values,
    {"use_bias": False, "qkv_bias": False, "qk_norm": False},
)

config_from_hf = MISTRAL.config_from_hf
hf_config_dict = MISTRAL.hf_config_dict
hf_config_from = MISTRAL.hf_config_from
import_mistral = MISTRAL.import_weights
export_mistral = MISTRAL.export_weights
save_hf_checkpoint = MISTRAL.save_hf_checkpoint
