"""Hugging Face GPT-2 <-> our `DecoderOnlyTransformer`: the `GPT2` family table.

GPT-2 is a configuration of our shared layers: learned absolute positions, pre-LayerNorm, biases
everywhere, a GELU MLP (HF's `gelu_new` is the tanh GELU, as is `jax.nn.gelu`), attention logits
scaled by 1/sqrt(head_dim), and an LM head tied to the token embedding without logit scaling
(`scale_tied_logits=False`). HF's `Conv1D` stores weights [in, out] (our kernel layout) and fuses
the Q, K and V projections into one `c_attn` tensor, split here into our three. Checkpoints of
`GPT2LMHeadModel` and of a bare `GPT2Model` (as on the Hub) both import.

    config = config_from_hf("path/to/hf_checkpoint", scan_layers=True)
    params = import_gpt2("path/to/hf_checkpoint", config)
    state_dict = export_gpt2(params, config)  # GPT2LMHeadModel.load_state_dict(..., strict=True)
    save_hf_checkpoint(params, config, "out_dir")  # GPT2LMHeadModel.from_pretrained

Weights are float32 numpy arrays on both sides; cast to `config.param_dtype` as needed. The
conversion itself is `t5x_like.interop.family.Family`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_like.interop.common import FusedRule, Rule, copy_rule, reshape_rule
from t5x_like.interop.family import (
    DECODER_ONLY,
    PLAIN_LAYOUT,
    Family,
    causal_lm_state,
    lm_head_rules,
)
from t5x_like.layers.config import TransformerConfig

# HF activation_function -> ours: the ones that match exactly. gelu_new, gelu_pytorch_tanh and
# gelu_fast are all the tanh GELU (ours: gelu); HF's plain "gelu" is the erf GELU (gelu_exact).
_ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACTIVATION_FUNCTION = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}
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


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation_function={activation!r} is not supported: only {sorted(_ACTIVATIONS)} "
            "map exactly onto our MLP."
        )
    for key, (supported, why) in _UNSUPPORTED.items():
        if hf.get(key, supported) != supported:
            raise ValueError(f"{key}={hf[key]!r} is not supported: {why}.")
    d_model = hf["n_embd"]
    return dict(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
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


def _layout_problems(config: TransformerConfig) -> list[str]:
    problems = []
    if config.kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (GPT-2 has full multi-head attention)")
    if config.num_heads * config.qkv_dim != config.d_model:
        problems.append(
            f"head_dim={config.qkv_dim} with num_heads={config.num_heads} (GPT-2: d_model / heads "
            f"= {config.d_model / config.num_heads:g})"
        )
    if config.tie_embeddings and config.scale_tied_logits:
        problems.append("scale_tied_logits=True (GPT-2's tied LM head does not scale its logits)")
    return problems


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    return {
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


def _ignored_keys(config: TransformerConfig) -> list[str]:
    # Older checkpoints (the Hub's) carry each layer's causal-mask buffers; HF ignores them too.
    return [
        f"transformer.h.{i}.attn.{name}"
        for i in range(config.num_layers)
        for name in ("bias", "masked_bias")
    ]


def _weight_rules(config: TransformerConfig, with_aliases: bool) -> list[Rule]:
    """Every HF tensor of the model, in GPT2LMHeadModel.state_dict() order."""
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
    return rules + list(lm_head_rules(config, embedding, with_aliases))


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


GPT2 = Family(
    label="GPT-2",
    model_types=("gpt2",),
    architecture="GPT2LMHeadModel",
    hf_config_class="GPT2Config",
    required_keys=("vocab_size", "n_embd", "n_layer", "n_head", "n_positions"),
    config_values=_config_values,
    hf_values=_hf_values,
    layout={
        "position": "learned",
        "norm": "layernorm",
        "norm_position": "pre",
        "use_bias": True,
        **PLAIN_LAYOUT,
    },
    activations=_ACTIVATION_FUNCTION,
    layout_problems=_layout_problems,
    weight_rules=_weight_rules,
    ignored_keys=_ignored_keys,
    prepare_state=causal_lm_state("transformer.", _EMBEDDING),
    target=DECODER_ONLY,
)

config_from_hf = GPT2.config_from_hf
hf_config_dict = GPT2.hf_config_dict
hf_config_from = GPT2.hf_config_from
import_gpt2 = GPT2.import_weights
export_gpt2 = GPT2.export_weights
save_hf_checkpoint = GPT2.save_hf_checkpoint
