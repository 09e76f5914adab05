"""Hugging Face Gemma 2 <-> our `DecoderOnlyTransformer`: the `GEMMA2` family table.

Gemma 2 is Gemma's architecture (see `t5x_like.interop.gemma`: GeGLU-tanh, sqrt(d) embedding
scale, RMSNorm x * (1 + w), tied head) plus:
- tanh soft-capping of the attention logits and of the final logits (`attn_logit_softcapping`,
  `final_logit_softcapping` -> our `attn_logit_softcap`, `final_logit_softcap`);
- a norm before and after each branch, four per layer (`post_branch_norm`);
- sliding-window (local) layers alternating with global ones (`layer_types`, by default every
  second layer global -> our `sliding_window` with `global_every=2`); any periodic pattern with
  the global layer last in each period maps, others are refused naming `layer_types`;
- attention logits scaled by `query_pre_attn_scalar`**-0.5 instead of head_dim**-0.5.

The helpers here (`gemma2_like_values`, `gemma2_like_hf_values`, `local_global`) serve Gemma 3
too (gemma3.py).

    params = import_gemma2("path/to/hf_checkpoint", config_from_hf("path/to/hf_checkpoint"))
"""

from __future__ import annotations

from typing import Any

from t5x_like.interop import gemma, llama
from t5x_like.layers.config import TransformerConfig

_FULL, _SLIDING = "full_attention", "sliding_attention"


def local_global(hf: dict[str, Any], default_period: int) -> dict[str, Any]:
    """Our `sliding_window` and `global_every` from HF's `sliding_window` and `layer_types`
    (absent: a global layer every `default_period`, or Gemma 3's older `sliding_window_pattern`).
    Raises ValueError, naming the field, for a pattern our periodic one cannot express."""
    layers = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:
        period = hf.get("sliding_window_pattern") or default_period
        types = [_FULL if (i + 1) % period == 0 else _SLIDING for i in range(layers)]
    if len(types) != layers or set(types) - {_FULL, _SLIDING}:
        raise ValueError(
            f"layer_types={types!r} must name {layers} layers, each {_FULL!r} or {_SLIDING!r}."
        )
    window = hf.get("sliding_window")
    if _SLIDING not in types or window is None:
        return {"sliding_window": None, "global_every": None}
    if not isinstance(window, int) or window <= 0:
        raise ValueError(f"sliding_window={window!r} must be a positive integer or null.")
    if _FULL not in types:
        return {"sliding_window": window, "global_every": None}
    period = types.index(_FULL) + 1
    if types != [_FULL if (i + 1) % period == 0 else _SLIDING for i in range(layers)]:
        raise ValueError(
            f"layer_types={types!r} is not supported: ours repeat k - 1 sliding layers then one "
            "full (model.global_every=k; Gemma 2: k=2, Gemma 3: k=6)."
        )
    return {"sliding_window": window, "global_every": period}


def local_global_hf_values(config: TransformerConfig) -> dict[str, Any]:
    """HF's `sliding_window` and `layer_types` of `config`."""
    types = [_SLIDING if config.is_local_layer(i) else _FULL for i in range(config.num_layers)]
    return {"sliding_window": config.sliding_window, "layer_types": types}


def _cap(hf: dict[str, Any], key: str) -> float | None:
    value = hf.get(key)
    if value is not None and (isinstance(value, bool) or not value > 0):
        raise ValueError(f"{key}={value!r} must be a positive number or null.")
    return None if value is None else float(value)


def _int_if_whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def gemma2_like_values(hf: dict[str, Any], default_period: int) -> dict[str, Any]:
    """The `TransformerConfig` fields of a Gemma 2-like config (Gemma 3 adds its own)."""
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    return dict(
        gemma.gemma_values(hf, act_key="hidden_activation"),
        **local_global(hf, default_period),
        attn_logit_softcap=_cap(hf, "attn_logit_softcapping"),
        final_logit_softcap=_cap(hf, "final_logit_softcapping"),
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or head_dim),
        post_branch_norm=True,
    )


def gemma2_like_hf_values(config: TransformerConfig) -> dict[str, Any]:
    """The config.json fields of a Gemma 2-like config."""
    return {
        **gemma.gemma_hf_values(config),
        **local_global_hf_values(config),
        "attn_logit_softcapping": config.attn_logit_softcap,
        "final_logit_softcapping": config.final_logit_softcap,
        # transformers declares it an int (real checkpoints: 144, 256).
        "query_pre_attn_scalar": _int_if_whole(config.query_pre_attn_scalar or config.qkv_dim),
    }


# The settings Gemma 2's config.json carries as values, which the LLaMA-like layout fixes.
GEMMA2_FREE = ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar")
GEMMA2_FREE += ("sliding_window", "global_every")


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    return gemma2_like_values(hf, default_period=2)


GEMMA2 = llama.llama_like_family(
    "Gemma 2",
    "gemma2",
    "Gemma2ForCausalLM",
    _config_values,
    gemma2_like_hf_values,
    {**gemma.GEMMA_LAYOUT, "post_branch_norm": True},
    norm_offset=1.0,
    free=GEMMA2_FREE,
)

config_from_hf = GEMMA2.config_from_hf
hf_config_dict = GEMMA2.hf_config_dict
hf_config_from = GEMMA2.hf_config_from
import_gemma2 = GEMMA2.import_weights
export_gemma2 = GEMMA2.export_weights
save_hf_checkpoint = GEMMA2.save_hf_checkpoint
