"""Hugging Face GPT-2 <-> our `DecoderOnlyTransformer`: weights and configs.

GPT-2 is a configuration of our shared layers: learned absolute positions, pre-LayerNorm, biases
everywhere, a GELU MLP (HF's `gelu_new` is the tanh GELU, as is `jax.nn.gelu`), attention logits
scaled by 1/sqrt(head_dim), and an LM head tied to the token embedding without logit scaling
(`scale_tied_logits=False`). HF's `Conv1D` stores weights [in, out] (our kernel layout) and fuses
the Q, K and V projections into one `c_attn` tensor, split here into our three.

    config = config_from_hf("path/to/hf_checkpoint", scan_layers=True)
    params = import_gpt2("path/to/hf_checkpoint", config)
    state_dict = export_gpt2(params, config)  # GPT2LMHeadModel.load_state_dict(..., strict=True)
    save_hf_checkpoint(params, config, "out_dir")  # GPT2LMHeadModel.from_pretrained

Weights are float32 numpy arrays on both sides; cast to `config.param_dtype` as needed.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from t5x_like.interop.common import (
    FusedRule,
    Rule,
    Source,
    StateDict,
    add_missing_prefix,
    canonical_tied_head,
    copy_rule,
    export_params,
    import_params,
    int_inputs,
    linear_rule,
    load_state_dict,
    param_shapes,
    read_hf_config,
    reshape_rule,
    write_hf_checkpoint,
)
from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer

# HF activation_function -> ours: the ones that match exactly. gelu_new, gelu_pytorch_tanh and
# gelu_fast are all the tanh GELU; HF's plain "gelu" is the erf GELU and deliberately absent.
_ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACTIVATION_FUNCTION = {"gelu": "gelu_new", "relu": "relu", "silu": "silu"}
_REQUIRED_CONFIG_KEYS = ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions")
# Settings that change the computation in ways our layers do not express, with the value that
# keeps parity. (reorder_and_upcast_attn only moves the 1/sqrt(head_dim) and upcasts to float32
# under mixed precision: the same function, so it is accepted.)
_UNSUPPORTED = {
    "scale_attn_by_inverse_layer_idx": (
        False,
        "it divides layer i's attention logits by i + 1, which our layers do not do",
    ),
    "add_cross_attention": (False, "GPT-2 with cross-attention is not a decoder-only model"),
}

_NORM_PARAMS = {"weight": "scale", "bias": "bias"}  # torch LayerNorm -> flax LayerNorm
_EMBEDDING = "transformer.wte.weight"
_LM_HEAD = "lm_head.weight"


def config_from_hf(hf_config: Any, **overrides: Any) -> TransformerConfig:
    """Our config for an HF GPT-2 config (a `transformers.GPT2Config`, its dict, a `config.json`
    path or a checkpoint directory). `overrides` set other fields, e.g. `scan_layers=True`.

    Raises ValueError for settings our model cannot reproduce exactly.
    """
    hf = read_hf_config(hf_config)
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"model_type {model_type!r} is not a GPT-2 config; expected 'gpt2'.")
    missing = [k for k in _REQUIRED_CONFIG_KEYS if k not in hf]
    if missing:
        raise ValueError(f"HF GPT-2 config lacks required keys {missing}.")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation_function={activation!r} is not supported: only {sorted(_ACTIVATIONS)} "
            "map exactly onto our MLP (HF's plain 'gelu' is the erf GELU whereas ours is the tanh "
            "approximation)."
        )
    for key, (supported, why) in _UNSUPPORTED.items():
        if hf.get(key, supported) != supported:
            raise ValueError(f"{key}={hf[key]!r} is not supported: {why}.")
    d_model, num_heads = hf["n_embd"], hf["n_head"]
    values = dict(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        num_layers=hf["n_layer"],
        num_heads=num_heads,
        num_kv_heads=None,
        head_dim=None,  # GPT-2's is always n_embd // n_head.
        mlp_dim=hf.get("n_inner") or 4 * d_model,
        activation=_ACTIVATIONS[activation],
        norm="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        norm_position="pre",
        position="learned",
        max_len=hf["n_positions"],
        scale_attention_logits=bool(hf.get("scale_attn_weights", True)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        scale_tied_logits=False,
        use_bias=True,
        # Our one dropout rate acts where GPT-2's resid_pdrop does (and on the embeddings and the
        # MLP's hidden layer); we have no attention dropout. Irrelevant to inference.
        dropout_rate=hf.get("resid_pdrop", 0.1),
    )
    values.update(overrides)
    return TransformerConfig(**values)


def _check_gpt2_layout(config: TransformerConfig) -> None:
    """Raises ValueError unless `config` is an architecture HF's GPT-2 can express."""
    problems = []
    expected = {
        "position": "learned",
        "norm": "layernorm",
        "norm_position": "pre",
        "use_bias": True,
    }
    for field, want in expected.items():
        if getattr(config, field) != want:
            problems.append(f"{field}={getattr(config, field)!r} (GPT-2: {want!r})")
    if config.activation not in _ACTIVATION_FUNCTION:
        problems.append(
            f"activation={config.activation!r} (GPT-2: one of {list(_ACTIVATION_FUNCTION)})"
        )
    if config.kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (GPT-2 has full multi-head attention)")
    if config.num_heads * config.qkv_dim != config.d_model:
        problems.append(
            f"head_dim={config.qkv_dim} with num_heads={config.num_heads} (GPT-2: d_model / heads "
            f"= {config.d_model / config.num_heads:g})"
        )
    if config.tie_embeddings and config.scale_tied_logits:
        problems.append("scale_tied_logits=True (GPT-2's tied LM head does not scale its logits)")
    if problems:
        raise ValueError("TransformerConfig is not a GPT-2 layout: " + "; ".join(problems) + ".")


def hf_config_dict(config: TransformerConfig) -> dict[str, Any]:
    """The HF `config.json` contents of a GPT-2-layout `config` (no transformers import needed)."""
    _check_gpt2_layout(config)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_len,
        "n_embd": config.d_model,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.mlp_dim,
        "activation_function": _ACTIVATION_FUNCTION[config.activation],
        "layer_norm_epsilon": config.norm_eps,
        "scale_attn_weights": config.scale_attention_logits,
        "tie_word_embeddings": config.tie_embeddings,
        "resid_pdrop": config.dropout_rate,
        "embd_pdrop": config.dropout_rate,
        "attn_pdrop": 0.0,
        # t5x_like.data.vocab's ids: pad 0 doubles as the causal LM's start token, eos 1.
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }


def hf_config_from(config: TransformerConfig) -> Any:
    """A `transformers.GPT2Config` for a GPT-2-layout `config` (needs the `[hf]` extra)."""
    from transformers import GPT2Config

    return GPT2Config(**hf_config_dict(config))


def _ignored_keys(config: TransformerConfig) -> list[str]:
    # Older checkpoints (the Hub's) carry each layer's causal-mask buffers; HF ignores them too.
    return [
        f"transformer.h.{i}.attn.{name}"
        for i in range(config.num_layers)
        for name in ("bias", "masked_bias")
    ]


def _weight_rules(config: TransformerConfig, with_head_alias: bool = False) -> list[Rule]:
    """Every HF tensor of the model, in GPT2LMHeadModel.state_dict() order.

    `with_head_alias` adds `lm_head.weight` as a copy of the tied embedding (a strict
    `load_state_dict` requires it); import reads the embedding once.
    """
    e, v = config.d_model, config.vocab_size
    embedding = ("token_embed", "embedding")
    rules: list[Rule] = [
        copy_rule(_EMBEDDING, embedding, (v, e)),
        copy_rule("transformer.wpe.weight", ("position_embed", "embedding"), (config.max_len, e)),
    ]
    for i in range(config.num_layers):
        rules += _layer_rules(config, i)
    rules += [
        copy_rule(f"transformer.ln_f.{hf_name}", ("decoder", "final_norm", name), (e,))
        for hf_name, name in _NORM_PARAMS.items()
    ]
    if not config.tie_embeddings:
        rules.append(linear_rule(_LM_HEAD, ("logits", "kernel"), e, v))
    elif with_head_alias:
        rules.append(copy_rule(_LM_HEAD, embedding, (v, e)))
    return rules


def _layer_rules(config: TransformerConfig, i: int) -> list[Rule]:
    e, h, d, f = config.d_model, config.num_heads, config.qkv_dim, config.mlp_dim
    hf, ours = f"transformer.h.{i}", ("decoder", f"layers_{i}")
    attn = (*ours, "self_attention")
    qkv = tuple((*attn, name) for name in ("query", "key", "value"))

    def norm(hf_norm: str, our_norm: str) -> list[Rule]:
        return [
            copy_rule(f"{hf}.{hf_norm}.{hf_name}", (*ours, our_norm, name), (e,))
            for hf_name, name in _NORM_PARAMS.items()
        ]

    # c_attn: a Conv1D x @ W + b whose output columns are [q | k | v], each head-major.
    fused_kernel = FusedRule(
        f"{hf}.attn.c_attn.weight",
        tuple((*p, "kernel") for p in qkv),
        (e, 3 * e),
        lambda w: [part.reshape(e, h, d) for part in np.split(w, 3, axis=1)],
        lambda *ks: np.concatenate([k.reshape(e, h * d) for k in ks], axis=1),
    )
    fused_bias = FusedRule(
        f"{hf}.attn.c_attn.bias",
        tuple((*p, "bias") for p in qkv),
        (3 * e,),
        lambda b: [part.reshape(h, d) for part in np.split(b, 3)],
        lambda *bs: np.concatenate([b.reshape(h * d) for b in bs]),
    )
    mlp = (*ours, "mlp")
    return [
        *norm("ln_1", "pre_attention_norm"),
        fused_kernel,
        fused_bias,
        reshape_rule(f"{hf}.attn.c_proj.weight", (*attn, "out", "kernel"), (e, e), (h, d, e)),
        copy_rule(f"{hf}.attn.c_proj.bias", (*attn, "out", "bias"), (e,)),
        *norm("ln_2", "pre_mlp_norm"),
        copy_rule(f"{hf}.mlp.c_fc.weight", (*mlp, "wi", "kernel"), (e, f)),
        copy_rule(f"{hf}.mlp.c_fc.bias", (*mlp, "wi", "bias"), (f,)),
        copy_rule(f"{hf}.mlp.c_proj.weight", (*mlp, "wo", "kernel"), (f, e)),
        copy_rule(f"{hf}.mlp.c_proj.bias", (*mlp, "wo", "bias"), (e,)),
    ]


@functools.lru_cache(maxsize=16)
def _model_param_shapes(config: TransformerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    return param_shapes(DecoderOnlyTransformer(config), *int_inputs((1, 1)))


def _scanned_stacks(config: TransformerConfig) -> dict[str, int] | None:
    return {"decoder": config.num_layers} if config.scan_layers else None


def import_gpt2(source: Source, config: TransformerConfig) -> dict[str, Any]:
    """Our parameter tree (nested dict of float32 numpy arrays) from an HF GPT-2 checkpoint.

    `source` is a torch or numpy state dict of `GPT2LMHeadModel` (or of a bare `GPT2Model`, as
    on the Hub), a `.safetensors` file, or an HF checkpoint directory (read without torch).
    Layers are stacked on a leading axis when `config.scan_layers`. Raises ValueError naming
    each missing, unexpected or mis-shaped tensor (with its expected shape), or a tied LM head
    that differs from the token embedding.
    """
    _check_gpt2_layout(config)
    state = add_missing_prefix(load_state_dict(source), "transformer.", keep=(_LM_HEAD,))
    state = canonical_tied_head(state, _LM_HEAD, _EMBEDDING, config.tie_embeddings)
    return import_params(
        state,
        _weight_rules(config),
        _model_param_shapes(config),
        ignored=_ignored_keys(config),
        scanned_stacks=_scanned_stacks(config),
    )


def export_gpt2(params: Any, config: TransformerConfig) -> StateDict:
    """The `GPT2LMHeadModel` state dict (float32 numpy; every key a strict `load_state_dict`
    requires, a tied head repeated under `lm_head.weight`) of our params (plain or logically
    boxed, numpy or fully addressable jax arrays; unrolled or scanned as `config.scan_layers`
    says)."""
    _check_gpt2_layout(config)
    return export_params(
        params,
        _weight_rules(config, with_head_alias=True),
        _model_param_shapes(config),
        scanned_stacks=_scanned_stacks(config),
    )


def save_hf_checkpoint(
    params: Any, config: TransformerConfig, directory: str | os.PathLike
) -> None:
    """Writes `config.json` and `model.safetensors` that
    `GPT2LMHeadModel.from_pretrained(directory)` loads (torch is not needed to write).

    Like transformers' own `save_pretrained`, a tied LM head is not written separately.
    """
    tied = [_LM_HEAD] if config.tie_embeddings else []
    state = export_gpt2(params, config)
    write_hf_checkpoint(state, hf_config_dict(config), directory, tied_keys=tied)
