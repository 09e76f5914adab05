"""One generic Hugging Face import / export / save path, driven by a per-family `Family` table.

A `Family` describes how one HF checkpoint family maps onto our models: its config.json mapping
(both ways), the layout our config must have for HF to express it, its weight rules (HF tensor
name <-> our param path, see `t5x_like.interop.common`), the HF keys to ignore and how a loaded
state dict is made canonical (prefixes, tied or aliased tensors). Its methods are the whole
conversion: `config_from_hf`, `hf_config_dict`, `hf_config_from`, `import_weights`,
`export_weights` and `save_hf_checkpoint`. The family modules (t5.py, gpt2.py, llama.py) hold
their table and bind these methods to their public names (`import_gpt2 = GPT2.import_weights`).

`Target` names which of our models a family maps onto (`DECODER_ONLY`, `ENCODER_DECODER`). The
helpers at the end (`LM_HEAD`, `lm_head_rules`, `causal_lm_state`) serve the families with an
LM head, whose checkpoints share the `lm_head.weight` convention.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn

from t5x_like.interop.common import (
    ParamPath,
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
    write_hf_checkpoint,
)
from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer
from t5x_like.models.encoder_decoder import EncoderDecoderTransformer

LM_HEAD = "lm_head.weight"
# The settings added for the LLaMA-like families (q/k/v biases, q/k norm, sliding windows,
# Gemma's embedding scale, soft-capping, post-branch norms, query_pre_attn_scalar, Llama 3 and
# local RoPE), off: what GPT-2's and T5's architectures require, so that their export refuses a
# config using any of them (naming the field) instead of writing a checkpoint that ignores it.
PLAIN_LAYOUT = {
    "qkv_bias": False,
    "qk_norm": False,
    "sliding_window": None,
    "scale_embeddings": False,
    "attn_logit_softcap": None,
    "final_logit_softcap": None,
    "query_pre_attn_scalar": None,
    "post_branch_norm": False,
    "rope_scaling_factor": None,
    "rope_local_theta": None,
}


@dataclasses.dataclass(frozen=True)
class Target:
    """One of our models, as the conversion needs it.

    Attributes:
      module: the Flax module for a config.
      init_shapes: the token input shapes that initialise it.
      layer_stacks: stack name -> number of layers, stacked on import when `scan_layers`.
    """

    module: Callable[[TransformerConfig], nn.Module]
    init_shapes: tuple[tuple[int, ...], ...]
    layer_stacks: Callable[[TransformerConfig], Mapping[str, int]]


DECODER_ONLY = Target(DecoderOnlyTransformer, ((1, 1),), lambda c: {"decoder": c.num_layers})
ENCODER_DECODER = Target(
    EncoderDecoderTransformer,
    ((1, 1), (1, 1)),
    lambda c: {"encoder": c.num_layers, "decoder": c.decoder_layers},
)


# eq=False: a family is compared and hashed by identity (it keys the param-shape cache).
@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """How one HF checkpoint family maps onto one of our models.

    Attributes:
      label: the family's name in error messages ("GPT-2").
      model_types: the HF `model_type`s it reads; the first is the default and the one written.
      architecture: the transformers model class that loads an exported checkpoint.
      hf_config_class: the transformers config class (`hf_config_from` builds one).
      required_keys: config.json keys without which no config is built.
      config_values: a checked HF config dict -> `TransformerConfig` fields; raises ValueError
        for settings our model cannot reproduce exactly.
      hf_values: a layout-checked config -> config.json fields (besides architectures and
        model_type).
      layout: `TransformerConfig` field -> the value HF's architecture requires.
      activations: our activation -> its HF name (what HF's architecture can express).
      layout_problems: other reasons a config is not this family's layout, one line each.
      weight_rules: (config, with_aliases) -> every HF tensor, in the HF state dict's order;
        `with_aliases` adds the names under which HF repeats a tied tensor (a strict
        `load_state_dict` requires them; import reads each tensor once, and a saved checkpoint
        writes each once).
      ignored_keys: HF tensors a checkpoint may carry that HF ignores on load too.
      prepare_state: a loaded state dict -> the one the rules read (prefixes, tied tensors).
      target: our model that the family maps onto.
    """

    label: str
    model_types: tuple[str, ...]
    architecture: str
    hf_config_class: str
    required_keys: tuple[str, ...]
    config_values: Callable[[dict[str, Any]], dict[str, Any]]
    hf_values: Callable[[TransformerConfig], dict[str, Any]]
    layout: Mapping[str, Any]
    activations: Mapping[str, str]
    layout_problems: Callable[[TransformerConfig], list[str]]
    weight_rules: Callable[[TransformerConfig, bool], list[Rule]]
    ignored_keys: Callable[[TransformerConfig], Iterable[str]]
    prepare_state: Callable[[StateDict, TransformerConfig], StateDict]
    target: Target

    def config_from_hf(self, hf_config: Any, **overrides: Any) -> TransformerConfig:
        """Our config for an HF config of this family (a transformers config object, its dict, a
        `config.json` path or a checkpoint directory). `overrides` set other fields, e.g.
        `scan_layers=True`.

        Raises ValueError for another family's config, missing keys, or settings our model
        cannot reproduce exactly.
        """
        hf = read_hf_config(hf_config)
        model_type = hf.get("model_type", self.model_types[0])
        if model_type not in self.model_types:
            expected = self.model_types if len(self.model_types) > 1 else self.model_types[0]
            raise ValueError(
                f"model_type {model_type!r} is not a {self.label} config; expected {expected!r}."
            )
        missing = [k for k in self.required_keys if k not in hf]
        if missing:
            raise ValueError(f"HF {self.label} config lacks required keys {missing}.")
        values = self.config_values(hf)
        values.update(overrides)
        return TransformerConfig(**values)

    def check_layout(self, config: TransformerConfig) -> None:
        """Raises ValueError, naming each problem, unless HF's architecture can express
        `config`."""
        problems = [
            f"{field}={getattr(config, field)!r} ({self.label}: {want!r})"
            for field, want in self.layout.items()
            if getattr(config, field) != want
        ]
        if config.activation not in self.activations:
            problems.append(
                f"activation={config.activation!r} ({self.label}: one of {list(self.activations)})"
            )
        problems += self.layout_problems(config)
        if problems:
            raise ValueError(
                f"TransformerConfig is not a {self.label} layout: " + "; ".join(problems) + "."
            )

    def hf_config_dict(self, config: TransformerConfig) -> dict[str, Any]:
        """The HF `config.json` contents of `config` (no transformers import needed)."""
        self.check_layout(config)
        return {
            "architectures": [self.architecture],
            "model_type": self.model_types[0],
            **self.hf_values(config),
        }

    def hf_config_from(self, config: TransformerConfig) -> Any:
        """The transformers config object of `config` (needs the `[hf]` extra)."""
        import transformers

        return getattr(transformers, self.hf_config_class)(**self.hf_config_dict(config))

    def import_weights(self, source: Source, config: TransformerConfig) -> dict[str, Any]:
        """Our parameter tree (nested dict of float32 numpy arrays) from an HF checkpoint.

        `source` is a torch or numpy state dict, a `.safetensors` file, or an HF checkpoint
        directory (read without torch; sharded ones too). Layers are stacked on a leading axis
        when `config.scan_layers`. Raises ValueError naming each missing, unexpected or
        mis-shaped tensor (with its expected shape), or a tied tensor that differs from its twin.
        """
        self.check_layout(config)
        state = self.prepare_state(load_state_dict(source), config)
        return import_params(
            state,
            self.weight_rules(config, False),
            _model_param_shapes(self, config),
            ignored=self.ignored_keys(config),
            scanned_stacks=self._scanned_stacks(config),
        )

    def export_weights(self, params: Any, config: TransformerConfig) -> StateDict:
        """The HF state dict (float32 numpy; every key a strict `load_state_dict` requires, tied
        tensors repeated under each name) of our params (plain or logically boxed, numpy or fully
        addressable jax arrays; unrolled or scanned as `config.scan_layers` says)."""
        self.check_layout(config)
        return export_params(
            params,
            self.weight_rules(config, True),
            _model_param_shapes(self, config),
            scanned_stacks=self._scanned_stacks(config),
        )

    def save_hf_checkpoint(
        self, params: Any, config: TransformerConfig, directory: str | os.PathLike
    ) -> None:
        """Writes `config.json` and `model.safetensors` that the `architecture`'s
        `from_pretrained(directory)` loads (torch is not needed to write).

        Like transformers' own `save_pretrained`, each tied tensor is written once.
        """
        read_once = {r.hf_key for r in self.weight_rules(config, False)}
        tied = [r.hf_key for r in self.weight_rules(config, True) if r.hf_key not in read_once]
        state = self.export_weights(params, config)
        write_hf_checkpoint(state, self.hf_config_dict(config), directory, tied_keys=tied)

    def _scanned_stacks(self, config: TransformerConfig) -> Mapping[str, int] | None:
        return self.target.layer_stacks(config) if config.scan_layers else None


@functools.lru_cache(maxsize=48)
def _model_param_shapes(family: Family, config: TransformerConfig) -> dict[ParamPath, tuple]:
    target = family.target
    return param_shapes(target.module(config), *int_inputs(*target.init_shapes))


def lm_head_rules(
    config: TransformerConfig, embedding: ParamPath, with_alias: bool
) -> Sequence[Rule]:
    """The `lm_head.weight` rule: our own head when untied; when tied, with `with_alias`, a copy
    of the token `embedding` (which our tied model computes logits from), else nothing."""
    e, v = config.d_model, config.vocab_size
    if not config.tie_embeddings:
        return [linear_rule(LM_HEAD, ("logits", "kernel"), e, v)]
    return [copy_rule(LM_HEAD, embedding, (v, e))] if with_alias else []


def causal_lm_state(
    prefix: str, embedding_key: str
) -> Callable[[StateDict, TransformerConfig], StateDict]:
    """A `Family.prepare_state` for a causal LM: adds the base model's `prefix` to a bare base
    model's keys (as the Hub's GPT-2, saved from `GPT2Model`) and drops a tied LM head after
    checking that it equals the token embedding."""

    def prepare(state: StateDict, config: TransformerConfig) -> StateDict:
        state = add_missing_prefix(state, prefix, keep=(LM_HEAD,))
        return canonical_tied_head(state, LM_HEAD, embedding_key, config.tie_embeddings)

    return prepare
