"""Hugging Face T5 (v1.0, v1.1, mT5) <-> our `EncoderDecoderTransformer`: the `T5` family table.

Both T5 versions are configurations of our shared layers: relative position buckets, RMSNorm
pre-norm, no biases, unscaled attention logits, one token embedding shared by encoder and decoder.
v1.1 (and mT5) add a gated-GELU MLP (`activation="geglu"`; HF's "gated-gelu" is the tanh GELU,
as is `jax.nn.gelu`; the other `feed_forward_proj` variants map too, see `_ACTIVATIONS`) and an
untied LM head (`tie_embeddings=False`); v1.0 has a ReLU MLP and computes logits against the
embedding scaled by d_model**-0.5 (`tie_embeddings=True`, HF's `scale_decoder_outputs`). HF
holds the shared embedding under three names; import reads it once and export repeats it under
each.

    config = config_from_hf("path/to/hf_checkpoint", scan_layers=True)
    params = import_t5("path/to/hf_checkpoint", config)
    state_dict = export_t5(params, config)  # T5ForConditionalGeneration.load_state_dict(...)
    save_hf_checkpoint(params, config, "out_dir")  # T5ForConditionalGeneration.from_pretrained

transformers >= 5 always ties `lm_head` to `shared` in a freshly built model; for an untied
(v1.1) config, untie it before loading `export_t5`'s state dict, or use `save_hf_checkpoint` and
`from_pretrained`, which unties a checkpoint whose LM head differs.

Weights are float32 numpy arrays on both sides; cast to `config.param_dtype` as needed. The
conversion itself is `t5x_like.interop.family.Family`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_like.interop.common import (
    StateDict,
    WeightRule,
    copy_rule,
    heads_in_rule,
    heads_out_rule,
    linear_rule,
)
from t5x_like.interop.family import ENCODER_DECODER, LM_HEAD, PLAIN_LAYOUT, Family, lm_head_rules
from t5x_like.layers.config import GATED_ACTIVATIONS, TransformerConfig

# HF feed_forward_proj ("ACT" or "gated-ACT") -> our activation: the MLPs that match exactly.
# HF's plain "gelu" is the erf GELU (our gelu_exact); "gated-gelu" is special-cased by T5Config
# to the tanh GELU (gelu_new), as are gelu_new and gelu_pytorch_tanh (our gelu / geglu).
_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "silu": "silu",
    "swish": "silu",
    "gated-gelu": "geglu",
    "gated-gelu_new": "geglu",
    "gated-gelu_pytorch_tanh": "geglu",
    "gated-gelu_fast": "geglu",
    "gated-silu": "swiglu",
    "gated-swish": "swiglu",
    "gated-relu": "reglu",
}
# Ours -> the name export writes.
_FEED_FORWARD_PROJ = {
    "relu": "relu",
    "gelu_exact": "gelu",
    "gelu": "gelu_new",
    "silu": "silu",
    "geglu": "gated-gelu",
    "swiglu": "gated-silu",
    "reglu": "gated-relu",
}
_MODEL_TYPES = ("t5", "mt5")  # mT5 is the T5 v1.1 architecture with a bigger vocabulary.
_REQUIRED_CONFIG_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")

_SHARED = "shared.weight"
# HF holds the one shared embedding under three names; checkpoints carry any subset of them.
_EMBEDDING_ALIASES = (_SHARED, "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Old checkpoints carry a relative-bias table in the first cross-attention that T5 never uses
# (HF ignores it on load too).
_IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _scales_decoder_outputs(hf: dict[str, Any]) -> bool:
    # transformers >= 5 always ties lm_head to `shared` in the module and records the v1.0/v1.1
    # difference as `scale_decoder_outputs`; older configs (and the Hub's) say it with
    # tie_word_embeddings, whose default is True.
    if "scale_decoder_outputs" in hf:
        return bool(hf["scale_decoder_outputs"])
    return bool(hf.get("tie_word_embeddings", True))


def _config_values(hf: dict[str, Any]) -> dict[str, Any]:
    if not hf.get("is_encoder_decoder", True):
        raise ValueError(
            "Only encoder-decoder T5 configs are supported (is_encoder_decoder=False)."
        )
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in _ACTIVATIONS:
        raise ValueError(
            f"feed_forward_proj={proj!r} is not supported: only {sorted(_ACTIVATIONS)} map "
            "exactly onto our MLP (T5 v1.0: 'relu'; v1.1 and mT5: 'gated-gelu')."
        )
    num_layers = hf["num_layers"]
    num_decoder_layers = hf.get("num_decoder_layers") or num_layers
    return dict(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        num_layers=num_layers,
        num_decoder_layers=None if num_decoder_layers == num_layers else num_decoder_layers,
        num_heads=hf["num_heads"],
        num_kv_heads=None,
        head_dim=hf["d_kv"],
        mlp_dim=hf["d_ff"],
        activation=_ACTIVATIONS[proj],
        norm="rmsnorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        norm_position="pre",
        position="relative",
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        scale_attention_logits=False,
        tie_embeddings=_scales_decoder_outputs(hf),
        use_bias=False,
        dropout_rate=hf.get("dropout_rate", 0.1),
    )


def _layout_problems(config: TransformerConfig) -> list[str]:
    if config.kv_heads != config.num_heads:
        return [f"num_kv_heads={config.num_kv_heads} (T5 has full multi-head attention)"]
    return []


def _hf_values(config: TransformerConfig) -> dict[str, Any]:
    return {
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.qkv_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_layers,
        "num_decoder_layers": config.decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": _FEED_FORWARD_PROJ[config.activation],
        # Read as "untied LM head" by transformers < 5 and as "scale_decoder_outputs" by >= 5.
        "tie_word_embeddings": config.tie_embeddings,
        # T5's (and t5x_like.data.vocab's) ids; the decoder starts from the pad token.
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def _weight_rules(config: TransformerConfig, with_aliases: bool) -> list[WeightRule]:
    """Every HF tensor of the model, in T5ForConditionalGeneration.state_dict() order."""
    e, v = config.d_model, config.vocab_size
    embedding = ("token_embed", "embedding")
    rules = [copy_rule(_SHARED, embedding, (v, e))]
    for stack, num_layers in ENCODER_DECODER.layer_stacks(config).items():
        if with_aliases:
            rules.append(copy_rule(f"{stack}.embed_tokens.weight", embedding, (v, e)))
        for i in range(num_layers):
            rules += _layer_rules(config, stack, i)
        rules.append(
            copy_rule(f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale"), (e,))
        )
    return rules + list(lm_head_rules(config, embedding, with_aliases))


def _layer_rules(config: TransformerConfig, stack: str, i: int) -> list[WeightRule]:
    e, h, d, f = config.d_model, config.num_heads, config.qkv_dim, config.mlp_dim
    hf, ours = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")

    def attention(sublayer: int, hf_name: str, our_name: str) -> list[WeightRule]:
        prefix, path = f"{hf}.{sublayer}.{hf_name}", (*ours, our_name)
        rules = [
            heads_in_rule(f"{prefix}.{p}.weight", (*path, name, "kernel"), e, h, d)
            for p, name in (("q", "query"), ("k", "key"), ("v", "value"))
        ]
        return rules + [heads_out_rule(f"{prefix}.o.weight", (*path, "out", "kernel"), h, d, e)]

    def norm(sublayer: int, name: str) -> WeightRule:
        return copy_rule(f"{hf}.{sublayer}.layer_norm.weight", (*ours, name, "scale"), (e,))

    rules = attention(0, "SelfAttention", "self_attention")
    if i == 0:  # HF keeps the stack's one bias table in its first layer.
        rules.append(
            copy_rule(
                f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relpos_bias", "rel_embedding"),
                (config.relative_attention_num_buckets, h),
            )
        )
    rules.append(norm(0, "pre_attention_norm"))
    mlp_sublayer = 1
    if stack == "decoder":
        rules += attention(1, "EncDecAttention", "cross_attention")
        rules.append(norm(1, "pre_cross_attention_norm"))
        mlp_sublayer = 2
    mlp = f"{hf}.{mlp_sublayer}.DenseReluDense"
    for name in ("wi_0", "wi_1") if config.activation in GATED_ACTIVATIONS else ("wi",):
        rules.append(linear_rule(f"{mlp}.{name}.weight", (*ours, "mlp", name, "kernel"), e, f))
    rules.append(linear_rule(f"{mlp}.wo.weight", (*ours, "mlp", "wo", "kernel"), f, e))
    rules.append(norm(mlp_sublayer, "pre_mlp_norm"))
    return rules


def _canonical_embeddings(state: StateDict, config: TransformerConfig) -> StateDict:
    """`state` with the shared embedding under `shared.weight` only, and the LM head present
    exactly when `config` has its own."""
    state = dict(state)
    present = [k for k in _EMBEDDING_ALIASES if k in state]
    if present:
        table = state.pop(present[0])
        for key in present[1:]:
            if state[key].shape != table.shape or not np.array_equal(state[key], table):
                raise ValueError(
                    f"{key!r} differs from {present[0]!r}; T5 (and our model) share one token "
                    "embedding between encoder and decoder."
                )
            del state[key]
        state[_SHARED] = table
    if config.tie_embeddings:
        head = state.pop(LM_HEAD, None)
        if head is not None and _SHARED in state and not np.array_equal(head, state[_SHARED]):
            raise ValueError(
                f"{LM_HEAD!r} differs from the shared embedding, but config.tie_embeddings=True "
                "computes logits from the embedding (T5 v1.0). An untied head is T5 v1.1's layout "
                "(tie_embeddings=False, no d_model**-0.5 logit scaling)."
            )
    elif LM_HEAD not in state and _SHARED in state:
        # transformers >= 5 ties lm_head to `shared` unless a checkpoint holds a distinct one,
        # and saves a tied pair once.
        state[LM_HEAD] = state[_SHARED]
    return state


T5 = Family(
    label="T5",
    model_types=_MODEL_TYPES,
    architecture="T5ForConditionalGeneration",
    hf_config_class="T5Config",
    required_keys=_REQUIRED_CONFIG_KEYS,
    config_values=_config_values,
    hf_values=_hf_values,
    layout={
        "position": "relative",
        "norm": "rmsnorm",
        "norm_position": "pre",
        "use_bias": False,
        "scale_attention_logits": False,
        **PLAIN_LAYOUT,
    },
    activations=_FEED_FORWARD_PROJ,
    layout_problems=_layout_problems,
    weight_rules=_weight_rules,
    ignored_keys=lambda config: _IGNORED_KEYS,
    prepare_state=_canonical_embeddings,
    target=ENCODER_DECODER,
)

config_from_hf = T5.config_from_hf
hf_config_dict = T5.hf_config_dict
hf_config_from = T5.hf_config_from
import_t5 = T5.import_weights
export_t5 = T5.export_weights
save_hf_checkpoint = T5.save_hf_checkpoint
