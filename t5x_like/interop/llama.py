"""Hugging Face LLaMA <-> our `DecoderOnlyTransformer`: the `LLAMA` family table.

LLaMA is a configuration of our shared layers: RoPE (the half-split layout, rotating the first
half of each head against the second, which is HF's `rotate_half`), pre-RMSNorm, a SwiGLU MLP
(`wi_0` = `gate_proj` under SiLU, `wi_1` = `up_proj`, `wo` = `down_proj`), grouped-query attention
(`num_kv_heads`), no biases and an untied LM head. A tied head (`tie_word_embeddings=True`) maps
to `tie_embeddings=True` with `scale_tied_logits=False` (exported, a scaled tied head of ours has
its d_model**-0.5 folded into the final norm: `tied_logits_factor`); `attention_bias` and
`mlp_bias`, when both set, map to `use_bias=True`. Llama 3.1 / 3.2's `rope_type: "llama3"` maps
to our `rope_scaling_*` fields. Checkpoints of `LlamaForCausalLM` and of a bare `LlamaModel` both
import.

The LLaMA-like families (mistral.py, qwen2.py, qwen3.py) share this module's tensor names, rules
and config mapping (`llama_like_values`, `llama_like_hf_values`, `llama_like_family`) and state
only their own attention settings.

    config = config_from_hf("path/to/hf_checkpoint", scan_layers=True)
    params = import_llama("path/to/hf_checkpoint", config)
    state_dict = export_llama(params, config)  # LlamaForCausalLM.load_state_dict(..., strict=True)
    save_hf_checkpoint(params, config, "out_dir")  # LlamaForCausalLM.from_pretrained

Weights are float32 numpy arrays on both sides; cast to `config.param_dtype` as needed. The
conversion itself is `t5x_like.interop.family.Family`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from t5x_like.interop.common import (
    Rule,
    WeightRule,
    copy_rule,
    heads_in_rule,
    heads_out_rule,
    linear_rule,
    reshape_rule,
)
from t5x_like.interop.family import DECODER_ONLY, Family, causal_lm_state, lm_head_rules
from t5x_like.layers.config import TransformerConfig

# HF hidden_act (of the gated MLP) -> our gated activation: the ones that match exactly. HF's
# plain "gelu" is the erf GELU whereas ours is the tanh approximation, so it is absent.
GATED_ACTIVATIONS = {
    "silu": "swiglu",
    "swish": "swiglu",
    "gelu_new": "geglu",
    "gelu_pytorch_tanh": "geglu",
    "gelu_fast": "geglu",
    "relu": "reglu",
}
_HIDDEN_ACT = {"swiglu": "silu", "geglu": "gelu_pytorch_tanh", "reglu": "relu"}
_REQUIRED_CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
_DEFAULT_ROPE_THETA = 10_000.0
# HF's llama3 rope parameters <-> our TransformerConfig fields.
_LLAMA3_ROPE = (
    ("factor", "rope_scaling_factor"),
    ("low_freq_factor", "rope_low_freq_factor"),
    ("high_freq_factor", "rope_high_freq_factor"),
    ("original_max_position_embeddings", "rope_original_max_len"),
)

_EMBEDDING = "model.embed_tokens.weight"


def rope_values(hf: dict[str, Any]) -> dict[str, Any]:
    """Our RoPE fields (theta, Llama 3 scaling) from transformers 5's `rope_parameters` or the
    older top-level `rope_theta` + `rope_scaling`; raises ValueError, naming the field, for
    other scaled or partial RoPE, which our layers do not implement."""
    values: dict[str, Any] = {"rope_theta": float(hf.get("rope_theta", _DEFAULT_ROPE_THETA))}
    # transformers 5 writes `rope_parameters`; older configs write `rope_scaling` (None unless
    # scaled) next to `rope_theta`.
    for key in ("rope_parameters", "rope_scaling"):
        params = hf.get(key) or {}
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type == "llama3":
            for theirs, ours in _LLAMA3_ROPE:
                if theirs not in params:
                    raise ValueError(f"{key} of rope_type 'llama3' lacks {theirs!r}.")
                cast = int if ours == "rope_original_max_len" else float
                values[ours] = cast(params[theirs])
        elif rope_type != "default":
            raise ValueError(
                f"{key} with rope_type {rope_type!r} is not supported: our RoPE is the default "
                "rotation or Llama 3's scaling ('llama3')."
            )
        partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
        if partial not in (None, 1, 1.0):
            raise ValueError(
                f"partial_rotary_factor={partial} is not supported: our RoPE rotates whole heads."
            )
        values["rope_theta"] = float(params.get("rope_theta", values["rope_theta"]))
    return values


def rope_hf_values(config: TransformerConfig) -> dict[str, Any]:
    """The config.json RoPE fields of `config` (`rope_parameters` for transformers 5, the
    older `rope_theta` / `rope_scaling` too, which 5 also accepts)."""
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        params["rope_type"] = "llama3"
        params.update({theirs: getattr(config, ours) for theirs, ours in _LLAMA3_ROPE})
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return {
        "rope_parameters": params,
        "rope_theta": config.rope_theta,
        "rope_scaling": scaling if config.rope_scaling is not None else None,
    }


def llama_like_values(hf: dict[str, Any]) -> dict[str, Any]:
    """The `TransformerConfig` fields shared by the LLaMA-like families (LLaMA, Mistral, Qwen2,
    Qwen3): sizes, GQA, SwiGLU-style gated MLP, pre-RMSNorm, RoPE, the tied or untied head. No
    biases; each family adds its own settings."""
    act = hf.get("hidden_act", "silu")
    if act not in GATED_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={act!r} is not supported: only {sorted(GATED_ACTIVATIONS)} map exactly "
            "onto our gated MLP (HF's plain 'gelu' is the erf GELU whereas ours is the tanh "
            "approximation)."
        )
    d_model, num_heads = hf["hidden_size"], hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or num_heads
    if num_heads % kv_heads:
        raise ValueError(
            f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads={kv_heads}."
        )
    head_dim = hf.get("head_dim") or d_model // num_heads
    return dict(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        # None (our defaults) where they equal the derived values, so configs compare equal.
        num_kv_heads=None if kv_heads == num_heads else kv_heads,
        head_dim=None if head_dim == d_model // num_heads else head_dim,
        mlp_dim=hf["intermediate_size"],
        activation=GATED_ACTIVATIONS[act],
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        norm_position="pre",
        position="rope",
        max_len=hf.get("max_position_embeddings", 2048),  # Unused by RoPE; kept for export.
        **rope_values(hf),
        scale_attention_logits=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        scale_tied_logits=False,
        # These families have no residual or embedding dropout (only attention_dropout).
        dropout_rate=0.0,
    )


def no_sliding_window(hf: dict[str, Any], label: str) -> None:
    """Raises ValueError naming the field when a Qwen-style config turns on its sliding window
    (`use_sliding_window`, or `layer_types` with sliding layers), which we do not implement
    per layer."""
    if hf.get("use_sliding_window"):
        raise ValueError(
            f"use_sliding_window=True is not supported for {label}: its sliding window applies "
            "to some layers only (max_window_layers); set it to false."
        )
    sliding = [i for i, t in enumerate(hf.get("layer_types") or []) if t != "full_attention"]
    if sliding:
        raise ValueError(
            f"layer_types marks layers {sliding} as {hf['layer_types'][sliding[0]]!r}: only "
            f"'full_attention' is supported for {label}."
        )


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    attention_bias, mlp_bias = bool(hf.get("attention_bias")), bool(hf.get("mlp_bias"))
    if attention_bias != mlp_bias:
        raise ValueError(
            f"attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported: our "
            "use_bias puts biases on both the attention and the MLP projections, or on neither."
        )
    return dict(llama_like_values(hf), use_bias=attention_bias)


def layout_problems(config: TransformerConfig, label: str) -> list[str]:
    """Why HF's LLaMA-like architecture `label` cannot express `config`, beyond `Family.layout`."""
    problems = []
    if config.num_heads % config.kv_heads:
        problems.append(
            f"num_kv_heads={config.num_kv_heads} does not divide num_heads={config.num_heads}"
        )
    return problems


def llama_like_hf_values(config: TransformerConfig) -> dict[str, Any]:
    """The config.json fields shared by the LLaMA-like families."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.qkv_dim,
        "hidden_act": _HIDDEN_ACT[config.activation],
        "max_position_embeddings": config.max_len,
        "rms_norm_eps": config.norm_eps,
        **rope_hf_values(config),
        "attention_dropout": 0.0,
        "tie_word_embeddings": config.tie_embeddings,
        # t5x_like.data.vocab's ids: pad 0 doubles as the causal LM's start token, eos 1. An
        # imported model's own ids come with its tokenizer (experiments/convert_checkpoint.py).
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    return {
        **llama_like_hf_values(config),
        "attention_bias": config.use_bias,
        "mlp_bias": config.use_bias,
    }


def _ignored_keys(config: TransformerConfig) -> list[str]:
    # Older checkpoints carry each layer's RoPE frequencies as a buffer; they are recomputed.
    return [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(config.num_layers)]


def _norm_rule(
    hf_key: str, path: tuple[str, ...], size: int, offset: float, factor: float = 1.0
) -> Rule:
    """An RMSNorm scale; with `offset`, HF stores scale - offset (Gemma's `x * (1 + w)`); with
    `factor`, HF's scale is ours times it (a constant folded into the norm)."""
    if not offset and factor == 1.0:
        return copy_rule(hf_key, path, (size,))
    return WeightRule(
        hf_key, path, (size,), lambda w: (w + offset) / factor, lambda s: s * factor - offset
    )


def tied_logits_factor(config: TransformerConfig) -> float:
    """What our tied head multiplies the logits by (`scale_tied_logits`: d_model**-0.5), which
    HF's unscaled tied heads get from the final norm's scale instead: RMSNorm(x) * w * c ==
    RMSNorm(x) * (w * c), so the exported checkpoint computes the same logits."""
    return config.d_model**-0.5 if config.tie_embeddings and config.scale_tied_logits else 1.0


def _weight_rules(
    config: TransformerConfig, with_aliases: bool, norm_offset: float = 0.0
) -> list[Rule]:
    """Every HF tensor of the model, in LlamaForCausalLM.state_dict() order (Mistral's, Qwen2's,
    Qwen3's and Gemma's are the same, with Qwen's q/k/v biases and Qwen3's q/k norms)."""
    e, v = config.d_model, config.vocab_size
    embedding = ("token_embed", "embedding")
    rules: list[Rule] = [copy_rule(_EMBEDDING, embedding, (v, e))]
    for i in range(config.num_layers):
        rules += _layer_rules(config, i, norm_offset)
    final_norm = ("decoder", "final_norm", "scale")
    factor = tied_logits_factor(config)
    rules.append(_norm_rule("model.norm.weight", final_norm, e, norm_offset, factor))
    return rules + list(lm_head_rules(config, embedding, with_aliases))


# HF's layer norms -> ours: LLaMA's two (post_attention_layernorm is the MLP's input norm), or
# Gemma 2 / 3's four (a norm before and after each branch; `post_branch_norm`).
_LAYER_NORMS = {
    False: (
        ("input_layernorm", "pre_attention_norm"),
        ("post_attention_layernorm", "pre_mlp_norm"),
    ),
    True: (
        ("input_layernorm", "pre_attention_norm"),
        ("post_attention_layernorm", "attention_output_norm"),
        ("pre_feedforward_layernorm", "pre_mlp_norm"),
        ("post_feedforward_layernorm", "mlp_output_norm"),
    ),
}


def _layer_rules(config: TransformerConfig, i: int, norm_offset: float) -> list[Rule]:
    e, h, d, f = config.d_model, config.num_heads, config.qkv_dim, config.mlp_dim
    hf, ours = f"model.layers.{i}", ("decoder", f"layers_{i}")
    attn, mlp = (*ours, "self_attention"), (*ours, "mlp")
    rules: list[Rule] = []
    for proj, name, heads in (
        ("q_proj", "query", h),
        ("k_proj", "key", config.kv_heads),
        ("v_proj", "value", config.kv_heads),
    ):
        key, path = f"{hf}.self_attn.{proj}", (*attn, name)
        rules.append(heads_in_rule(f"{key}.weight", (*path, "kernel"), e, heads, d))
        if config.use_bias or config.qkv_bias:
            rules.append(reshape_rule(f"{key}.bias", (*path, "bias"), (heads * d,), (heads, d)))
    key, path = f"{hf}.self_attn.o_proj", (*attn, "out")
    rules.append(heads_out_rule(f"{key}.weight", (*path, "kernel"), h, d, e))
    if config.use_bias:
        rules.append(copy_rule(f"{key}.bias", (*path, "bias"), (e,)))
    if config.qk_norm:
        for hf_norm, norm in (("q_norm", "query_norm"), ("k_norm", "key_norm")):
            key = f"{hf}.self_attn.{hf_norm}.weight"
            rules.append(_norm_rule(key, (*attn, norm, "scale"), d, norm_offset))
    for proj, name, in_dim, out_dim in (
        ("gate_proj", "wi_0", e, f),
        ("up_proj", "wi_1", e, f),
        ("down_proj", "wo", f, e),
    ):
        key, path = f"{hf}.mlp.{proj}", (*mlp, name)
        rules.append(linear_rule(f"{key}.weight", (*path, "kernel"), in_dim, out_dim))
        if config.use_bias:
            rules.append(copy_rule(f"{key}.bias", (*path, "bias"), (out_dim,)))
    for hf_norm, norm in _LAYER_NORMS[config.post_branch_norm]:
        key = f"{hf}.{hf_norm}.weight"
        rules.append(_norm_rule(key, (*ours, norm, "scale"), e, norm_offset))
    return rules


# What every LLaMA-like architecture requires of our config; each family adds its own
# attention settings (biases, q/k norm, sliding window).
LLAMA_LIKE_LAYOUT = {
    "position": "rope",
    "norm": "rmsnorm",
    "norm_position": "pre",
    "scale_attention_logits": True,
    "scale_embeddings": False,
    # Gemma 2 / 3's settings (gemma2.py, gemma3.py), which the others' architectures lack.
    "attn_logit_softcap": None,
    "final_logit_softcap": None,
    "query_pre_attn_scalar": None,
    "post_branch_norm": False,
    "global_every": None,
    "rope_local_theta": None,
}


def llama_like_family(
    label: str,
    model_type: str,
    architecture: str,
    config_values: Callable[[dict[str, Any]], dict[str, Any]],
    hf_values: Callable[[TransformerConfig], dict[str, Any]],
    layout: dict[str, Any],
    norm_offset: float = 0.0,
    free: tuple[str, ...] = (),
) -> Family:
    """The `Family` table of a LLaMA-like HF architecture (same tensor names and layout as
    `LlamaForCausalLM`): its config mapping, the settings it fixes (`layout`) and, for Gemma,
    the offset of its RMSNorm weights (`norm_offset`: it computes x * (norm_offset + w)), and
    the fields of `LLAMA_LIKE_LAYOUT` that its config.json sets to any value (`free`)."""
    layout = {k: v for k, v in {**LLAMA_LIKE_LAYOUT, **layout}.items() if k not in free}
    return Family(
        label=label,
        model_types=(model_type,),
        architecture=architecture,
        hf_config_class=architecture.replace("ForCausalLM", "Config"),
        required_keys=_REQUIRED_CONFIG_KEYS,
        config_values=config_values,
        hf_values=hf_values,
        layout=layout,
        activations=_HIDDEN_ACT,
        layout_problems=functools.partial(_layout_problems_of, label),
        weight_rules=functools.partial(_weight_rules, norm_offset=norm_offset),
        ignored_keys=_ignored_keys,
        prepare_state=causal_lm_state("model.", _EMBEDDING),
        target=DECODER_ONLY,
    )


def _layout_problems_of(label: str, config: TransformerConfig) -> list[str]:
    return layout_problems(config, label)


LLAMA = llama_like_family(
    "LLaMA",
    "llama",
    "LlamaForCausalLM",
    _config_values,
    _hf_values,
    {"qkv_bias": False, "qk_norm": False, "sliding_window": None},
)

config_from_hf = LLAMA.config_from_hf
hf_config_dict = LLAMA.hf_config_dict
hf_config_from = LLAMA.hf_config_from
import_llama = LLAMA.import_weights
export_llama = LLAMA.export_weights
save_hf_checkpoint = LLAMA.save_hf_checkpoint
