"""Hugging Face Gemma 3 (text) <-> our `DecoderOnlyTransformer`: the `GEMMA3` family table.

Gemma 3's text model (`Gemma3ForCausalLM`, model_type `gemma3_text`) is Gemma 2's architecture
(see `t5x_like.interop.gemma2`) with an RMSNorm x * (1 + w) over each query and key head before
RoPE (our `qk_norm`), no soft-capping by default, five sliding-window layers per global one
(`layer_types`, or the older `sliding_window_pattern`: 6), and RoPE of its own per layer kind:
`rope_parameters["full_attention"]` (theta 1e6; Llama 3-style scaling maps, other scalings are
refused) and `rope_parameters["sliding_attention"]` (theta 1e4, unscaled: our
`rope_local_theta`); older configs name them `rope_theta` / `rope_scaling` and
`rope_local_base_freq`. The multimodal `Gemma3ForConditionalGeneration` is not converted.

    params = import_gemma3("path/to/hf_checkpoint", config_from_hf("path/to/hf_checkpoint"))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from t5x_like.interop import gemma, gemma2, llama
from t5x_like.layers.config import TransformerConfig

_GLOBAL_THETA, _LOCAL_THETA = 1_000_000.0, 10_000.0


def _rope_values(hf: dict[str, Any]) -> dict[str, Any]:
    params = hf.get("rope_parameters") or {}
    if {"full_attention", "sliding_attention"} & set(params):  # transformers 5, per layer kind
        full = dict(params.get("full_attention") or {})
        sliding = dict(params.get("sliding_attention") or {})
        where = "rope_parameters['sliding_attention']"
    else:  # Older configs: the global layers' rope_theta / rope_scaling, the local layers' base.
        full = dict(hf.get("rope_scaling") or {}, rope_theta=hf.get("rope_theta", _GLOBAL_THETA))
        sliding = {"rope_theta": hf.get("rope_local_base_freq", _LOCAL_THETA)}
        where = "rope_local_base_freq"
    full.setdefault("rope_theta", _GLOBAL_THETA)
    rope_type = sliding.get("rope_type", sliding.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"{where} with rope_type {rope_type!r} is not supported: our sliding-window layers "
            "use unscaled RoPE."
        )
    return dict(
        llama.rope_values({"rope_parameters": full}),
        rope_local_theta=float(sliding.get("rope_theta", _LOCAL_THETA)),
    )


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    return dict(
        gemma2.gemma2_like_values(hf, default_period=6),
        **_rope_values(hf),
        qk_norm=True,
    )


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    values = gemma2.gemma2_like_hf_values(config)
    full = values.pop("rope_parameters")
    del values["rope_theta"], values["rope_scaling"]
    local_theta = config.rope_local_theta
    if local_theta is None and config.rope_scaling is not None:
        raise ValueError(
            "rope_local_theta=None with rope_scaling_factor set: Gemma 3's sliding-window layers "
            "use unscaled RoPE; set model.rope_local_theta."
        )
    values["rope_parameters"] = {
        "full_attention": full,
        "sliding_attention": {
            "rope_type": "default",
            "rope_theta": local_theta or full["rope_theta"],
        },
    }
    return values


GEMMA3 = dataclasses.replace(
    llama.llama_like_family(
        "Gemma 3",
        "gemma3_text",
        "Gemma3ForCausalLM",
        _config_values,
        _hf_values,
        {**gemma.GEMMA_LAYOUT, "post_branch_norm": True, "qk_norm": True},
        norm_offset=1.0,
        free=(*gemma2.GEMMA2_FREE, "rope_local_theta"),
    ),
    hf_config_class="Gemma3TextConfig",
)

config_from_hf = GEMMA3.config_from_hf
hf_config_dict = GEMMA3.hf_config_dict
hf_config_from = GEMMA3.hf_config_from
import_gemma3 = GEMMA3.import_weights
export_gemma3 = GEMMA3.export_weights
save_hf_checkpoint = GEMMA3.save_hf_checkpoint
