"""Hugging Face BERT / RoBERTa <-> our `EncoderOnlyTransformer`: one `Family` table per
architecture.

BERT is a configuration of our shared layers: learned absolute positions, token types, an
embedding LayerNorm, post-LayerNorm layers with biases everywhere, the erf GELU (HF's "gelu"; our
`gelu_exact`), attention logits scaled by 1/sqrt(head_dim), and heads from layers/heads.py. The
architecture decides the head (`ARCHITECTURES`): BertForMaskedLM (mlm), BertForPreTraining
(mlm + NSP on the pooler), BertForSequenceClassification (pooler + classifier),
BertForTokenClassification, BertForQuestionAnswering, RobertaForMaskedLM.

RoBERTa differs in its names and its positions: HF numbers them from padding_idx + 1 (= 2), so
our table is HF's without its first pad_token_id + 1 rows (written back as zeros on export; HF
never reads them for real tokens). RoBERTa checkpoints have one token type (type_vocab_size 1).

    family = family_for_hf("path/to/hf_checkpoint")          # by architectures[0]
    config = family.config_from_hf("path/to/hf_checkpoint")
    params = family.import_weights("path/to/hf_checkpoint", config)
    module = EncoderOnlyTransformer(config, **module_args("path/to/hf_checkpoint"))
    family.save_hf_checkpoint(params, config, "out_dir")     # <architecture>.from_pretrained

`BERT` and `ROBERTA` (the masked-LM tables) are what `interop.registry` lists by model_type.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from t5x_like.interop.common import (
    Rule,
    StateDict,
    WeightRule,
    add_missing_prefix,
    canonical_tied_head,
    copy_rule,
    heads_in_rule,
    heads_out_rule,
    linear_rule,
    read_hf_config,
    reshape_rule,
)
from t5x_like.interop.family import Family, Target
from t5x_like.layers.config import TransformerConfig
from t5x_like.models.encoder_only import HEAD_TASKS, EncoderOnlyTransformer

# HF architecture -> (model_type, our encoder head).
ARCHITECTURES = {
    "BertForMaskedLM": ("bert", "mlm"),
    "BertForPreTraining": ("bert", "pretraining"),
    "BertForSequenceClassification": ("bert", "classification"),
    "BertForTokenClassification": ("bert", "token_classification"),
    "BertForQuestionAnswering": ("bert", "question_answering"),
    "RobertaForMaskedLM": ("roberta", "mlm"),
}
_DEFAULT_ARCHITECTURE = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM"}
# HF hidden_act -> ours (exact matches only) and back.
_ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
}
_HIDDEN_ACT = {"gelu_exact": "gelu", "gelu": "gelu_new", "relu": "relu"}
_NORM_PARAMS = {"weight": "scale", "bias": "bias"}  # torch LayerNorm -> flax LayerNorm


def _position_offset(model_type: str, pad_token_id: int) -> int:
    """Rows of HF's position table before position 0 (RoBERTa: padding_idx + 1)."""
    return pad_token_id + 1 if model_type == "roberta" else 0


def _config_values(model_type: str, hf: dict[str, Any]) -> dict[str, Any]:
    activation = hf.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"hidden_act={activation!r} is not supported: only {sorted(_ACTIVATIONS)} map "
            "exactly onto our MLP."
        )
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(
            f"position_embedding_type={position_type!r} is not supported: only 'absolute' "
            "(learned positions) maps onto our model."
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("A BERT decoder (is_decoder / add_cross_attention) is not encoder-only.")
    pad_token_id = hf.get("pad_token_id", 1 if model_type == "roberta" else 0)
    offset = _position_offset(model_type, pad_token_id)
    return dict(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=None,
        head_dim=None,
        mlp_dim=hf["intermediate_size"],
        activation=_ACTIVATIONS[activation],
        norm="layernorm",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_position="post",
        position="learned",
        max_len=hf["max_position_embeddings"] - offset,
        scale_attention_logits=True,
        tie_embeddings=True,
        scale_tied_logits=False,
        use_bias=True,
        dropout_rate=hf.get("hidden_dropout_prob", 0.1),
    )


def _layout_problems(config: TransformerConfig) -> list[str]:
    problems = []
    if config.kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (BERT has full multi-head attention)")
    if config.num_heads * config.qkv_dim != config.d_model:
        problems.append(
            f"head_dim={config.qkv_dim} with num_heads={config.num_heads} (BERT: d_model / heads)"
        )
    return problems


def _norm(hf_prefix: str, path: tuple[str, ...], e: int) -> list[Rule]:
    return [
        copy_rule(f"{hf_prefix}.{hf_name}", (*path, name), (e,))
        for hf_name, name in _NORM_PARAMS.items()
    ]


def _dense(hf_prefix: str, path: tuple[str, ...], in_dim: int, out_dim: int) -> list[Rule]:
    return [
        linear_rule(f"{hf_prefix}.weight", (*path, "kernel"), in_dim, out_dim),
        copy_rule(f"{hf_prefix}.bias", (*path, "bias"), (out_dim,)),
    ]


def _layer_rules(config: TransformerConfig, base: str, i: int) -> list[Rule]:
    e, h, d, f = config.d_model, config.num_heads, config.qkv_dim, config.mlp_dim
    hf, ours = f"{base}.encoder.layer.{i}", ("encoder", f"layers_{i}")
    attn = (*ours, "self_attention")
    rules: list[Rule] = []
    for name in ("query", "key", "value"):
        rules += [
            heads_in_rule(f"{hf}.attention.self.{name}.weight", (*attn, name, "kernel"), e, h, d),
            reshape_rule(f"{hf}.attention.self.{name}.bias", (*attn, name, "bias"), (e,), (h, d)),
        ]
    return [
        *rules,
        heads_out_rule(f"{hf}.attention.output.dense.weight", (*attn, "out", "kernel"), h, d, e),
        copy_rule(f"{hf}.attention.output.dense.bias", (*attn, "out", "bias"), (e,)),
        *_norm(f"{hf}.attention.output.LayerNorm", (*ours, "post_attention_norm"), e),
        *_dense(f"{hf}.intermediate.dense", (*ours, "mlp", "wi"), e, f),
        *_dense(f"{hf}.output.dense", (*ours, "mlp", "wo"), f, e),
        *_norm(f"{hf}.output.LayerNorm", (*ours, "post_mlp_norm"), e),
    ]


def _positions_rule(key: str, config: TransformerConfig, offset: int) -> Rule:
    e = config.d_model

    def to_hf(table: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((offset, e), table.dtype), table])

    return WeightRule(
        key,
        ("position_embed", "embedding"),
        (config.max_len + offset, e),
        lambda t: t[offset:],
        to_hf,
    )


class _Table:
    """The per-architecture pieces of a Family: names, head rules, aliases."""

    def __init__(self, architecture: str, type_vocab_size: int, num_labels: int, pad_id: int):
        self.architecture = architecture
        self.model_type, self.head = ARCHITECTURES[architecture]
        self.type_vocab_size = type_vocab_size
        self.num_labels = num_labels
        self.pad_id = pad_id
        self.base = self.model_type  # "bert." / "roberta." prefix of the base model.
        self.offset = _position_offset(self.model_type, pad_id)
        roberta = self.model_type == "roberta"
        self.mlm_prefix = "lm_head" if roberta else "cls.predictions"
        self.embedding_key = f"{self.base}.embeddings.word_embeddings.weight"

    # -- config -------------------------------------------------------------------------------

    def config_values(self, hf: dict[str, Any]) -> dict[str, Any]:
        return _config_values(self.model_type, hf)

    def hf_values(self, config: TransformerConfig) -> dict[str, Any]:
        values = {
            "vocab_size": config.vocab_size,
            "hidden_size": config.d_model,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "intermediate_size": config.mlp_dim,
            "hidden_act": _HIDDEN_ACT[config.activation],
            "hidden_dropout_prob": config.dropout_rate,
            "attention_probs_dropout_prob": 0.0,  # Our attention has no dropout.
            "max_position_embeddings": config.max_len + self.offset,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": config.norm_eps,
            "position_embedding_type": "absolute",
            "pad_token_id": self.pad_id,
            "tie_word_embeddings": True,
        }
        if self.head in ("classification", "token_classification"):
            values["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            values["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return values

    # -- weights ------------------------------------------------------------------------------

    def _embedding_rules(self, config: TransformerConfig) -> list[Rule]:
        e, v, b = config.d_model, config.vocab_size, self.base
        words = copy_rule(self.embedding_key, ("embedding",), (v, e))
        positions = _positions_rule(
            f"{b}.embeddings.position_embeddings.weight", config, self.offset
        )
        types = copy_rule(
            f"{b}.embeddings.token_type_embeddings.weight",
            ("token_type_embedding",),
            (self.type_vocab_size, e),
        )
        norm = _norm(f"{b}.embeddings.LayerNorm", ("embed_norm",), e)
        if self.model_type == "roberta":  # Its state_dict order.
            return [words, types, *norm, positions]
        return [words, positions, types, *norm]

    def _mlm_rules(self, config: TransformerConfig, with_aliases: bool) -> list[Rule]:
        e, v, p = config.d_model, config.vocab_size, self.mlm_prefix
        roberta = self.model_type == "roberta"
        transform = f"{p}.dense" if roberta else f"{p}.transform.dense"
        norm = f"{p}.layer_norm" if roberta else f"{p}.transform.LayerNorm"
        rules = [
            copy_rule(f"{p}.bias", ("mlm_head", "bias"), (v,)),
            *_dense(transform, ("mlm_head", "transform"), e, e),
            *_norm(norm, ("mlm_head", "transform_norm"), e),
        ]
        if with_aliases:  # HF repeats the tied table and the bias under the decoder's names.
            rules += [
                copy_rule(f"{p}.decoder.weight", ("embedding",), (v, e)),
                copy_rule(f"{p}.decoder.bias", ("mlm_head", "bias"), (v,)),
            ]
        return rules

    def weight_rules(self, config: TransformerConfig, with_aliases: bool) -> list[Rule]:
        """Every HF tensor of the architecture, in its state_dict() order."""
        e = config.d_model
        rules = self._embedding_rules(config)
        for i in range(config.num_layers):
            rules += _layer_rules(config, self.base, i)
        head = self.head
        if head in ("pretraining", "classification"):
            rules += _dense(f"{self.base}.pooler.dense", ("pooler", "dense"), e, e)
        if head in ("mlm", "pretraining"):
            rules += self._mlm_rules(config, with_aliases)
        if head == "pretraining":
            rules += _dense("cls.seq_relationship", ("nsp", "dense"), e, 2)
        elif head in ("classification", "token_classification"):
            rules += _dense("classifier", ("classifier", "dense"), e, self.num_labels)
        elif head == "question_answering":
            rules += _dense("qa_outputs", ("qa_outputs", "dense"), e, 2)
        return rules

    def ignored_keys(self, config: TransformerConfig) -> list[str]:
        # Buffers older checkpoints saved; HF ignores them too.
        return [
            f"{self.base}.embeddings.position_ids",
            f"{self.base}.embeddings.token_type_ids",
        ]

    def prepare_state(self, state: StateDict, config: TransformerConfig) -> StateDict:
        """Adds the base model's prefix to a bare base model's keys; drops the MLM decoder's
        copies of the embedding and of the output bias after checking that they agree."""
        heads = ("cls.", "lm_head.", "classifier.", "qa_outputs.")
        keep = [k for k in state if k.startswith(heads)]
        state = add_missing_prefix(state, f"{self.base}.", keep=keep)
        if self.head in ("mlm", "pretraining"):
            p = self.mlm_prefix
            state = canonical_tied_head(state, f"{p}.decoder.weight", self.embedding_key, True)
            bias = state.pop(f"{p}.decoder.bias", None)
            if (
                bias is not None
                and f"{p}.bias" in state
                and not np.array_equal(bias, state[f"{p}.bias"])
            ):
                raise ValueError(f"'{p}.decoder.bias' differs from '{p}.bias' (HF ties them).")
        return state


@functools.lru_cache(maxsize=64)
def family(
    architecture: str = "BertForMaskedLM",
    type_vocab_size: int | None = None,
    num_labels: int = 2,
    pad_token_id: int | None = None,
) -> Family:
    """The `Family` of one HF architecture (`ARCHITECTURES`), for checkpoints with this many
    token types (default: BERT 2, RoBERTa 1) and labels (the classification heads)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"HF architecture {architecture!r} is not supported; choose one of "
            f"{sorted(ARCHITECTURES)}."
        )
    model_type, head = ARCHITECTURES[architecture]
    roberta = model_type == "roberta"
    if type_vocab_size is None:
        type_vocab_size = 1 if roberta else 2
    if pad_token_id is None:
        pad_token_id = 1 if roberta else 0
    table = _Table(architecture, type_vocab_size, num_labels, pad_token_id)

    def build(config: TransformerConfig) -> EncoderOnlyTransformer:
        return EncoderOnlyTransformer(
            config, type_vocab_size=type_vocab_size, head=head, num_labels=num_labels
        )

    return Family(
        label="RoBERTa" if roberta else "BERT",
        model_types=(model_type,),
        architecture=architecture,
        hf_config_class="RobertaConfig" if roberta else "BertConfig",
        required_keys=(
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        ),
        config_values=table.config_values,
        hf_values=table.hf_values,
        layout={
            "position": "learned",
            "norm": "layernorm",
            "norm_position": "post",
            "use_bias": True,
            "tie_embeddings": True,
            "scale_tied_logits": False,
            "scale_attention_logits": True,
        },
        activations=_HIDDEN_ACT,
        layout_problems=_layout_problems,
        weight_rules=table.weight_rules,
        ignored_keys=table.ignored_keys,
        prepare_state=table.prepare_state,
        target=Target(build, ((1, 1),), lambda c: {"encoder": c.num_layers}),
    )


def _hf_fields(hf_config: Any) -> tuple[str, int, int, int | None]:
    hf = read_hf_config(hf_config)
    model_type = hf.get("model_type", "bert")
    if model_type not in _DEFAULT_ARCHITECTURE:
        raise ValueError(f"model_type {model_type!r} is not a BERT or RoBERTa config.")
    architecture = (hf.get("architectures") or [_DEFAULT_ARCHITECTURE[model_type]])[0]
    num_labels = len(hf["id2label"]) if hf.get("id2label") else hf.get("num_labels", 2)
    if ARCHITECTURES.get(architecture, ("", ""))[1] not in (
        "classification",
        "token_classification",
    ):
        num_labels = 2  # Unused by the other heads: one Family for all their checkpoints.
    default_types = 1 if model_type == "roberta" else 2
    return (
        architecture,
        hf.get("type_vocab_size", default_types),
        num_labels,
        hf.get("pad_token_id"),
    )


def family_for_hf(hf_config: Any) -> Family:
    """The `Family` of an HF BERT/RoBERTa config (object, dict, config.json or checkpoint dir),
    by its architectures[0], type_vocab_size, labels and pad_token_id."""
    architecture, types, labels, pad = _hf_fields(hf_config)
    return family(architecture, types, labels, pad)


def workdir_config(hf_config: Any) -> dict[str, dict[str, Any]]:
    """The experiment config of an HF BERT/RoBERTa checkpoint besides its `TransformerConfig`
    (section -> fields; what `convert_checkpoint --from_hf` writes into the workdir): the
    encoder-only family with the architecture's head, token types and labels, and the task
    that head trains on (the masked-LM heads: data.task='mlm')."""
    args = module_args(hf_config)
    model = dict(
        family="encoder_only",
        encoder_head=args["head"],
        type_vocab_size=args["type_vocab_size"],
        num_labels=args["num_labels"],
    )
    config = family_for_hf(hf_config).config_from_hf(hf_config)
    # Rows of 128 tokens (the BERT presets'), or as many as the position table holds.
    seq_len = min(128, config.max_len)
    data: dict[str, Any] = dict(task=HEAD_TASKS[args["head"]], extra_ids=0, seq_len=seq_len)
    if args["head"] == "pretraining":
        data["sentence_pair"] = "nsp"
    return {"model": model, "data": data}


def module_args(hf_config: Any) -> dict[str, Any]:
    """`EncoderOnlyTransformer` arguments besides the config, for an HF config: type_vocab_size,
    head and num_labels."""
    architecture, types, labels, _ = _hf_fields(hf_config)
    return dict(type_vocab_size=types, head=ARCHITECTURES[architecture][1], num_labels=labels)


BERT = family("BertForMaskedLM")
ROBERTA = family("RobertaForMaskedLM")

config_from_hf = BERT.config_from_hf
hf_config_dict = BERT.hf_config_dict
hf_config_from = BERT.hf_config_from
import_bert = BERT.import_weights
export_bert = BERT.export_weights
save_hf_checkpoint = BERT.save_hf_checkpoint
