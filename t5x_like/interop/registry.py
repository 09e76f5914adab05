"""The Hugging Face checkpoint families we convert, by name and by HF `model_type`.

A caller holding only a checkpoint picks its converter from its config.json:

    family = registry.family_for("path/to/hf_checkpoint")
    config = family.config_from_hf("path/to/hf_checkpoint")
    params = family.import_weights("path/to/hf_checkpoint", config)

A new family is a module with its `Family` table, listed in `FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from t5x_like.interop import bert, gemma, gemma2, gemma3, gpt2, llama, mistral, qwen2, qwen3, t5
from t5x_like.interop.common import read_hf_config
from t5x_like.interop.family import Family

FAMILIES: Mapping[str, Family] = {
    "t5": t5.T5,
    "gpt2": gpt2.GPT2,
    "llama": llama.LLAMA,
    "mistral": mistral.MISTRAL,
    "qwen2": qwen2.QWEN2,
    "qwen3": qwen3.QWEN3,
    "gemma": gemma.GEMMA,
    "gemma2": gemma2.GEMMA2,
    "gemma3": gemma3.GEMMA3,
    # The masked-LM tables; bert.family_for_hf picks the table of a checkpoint's architecture.
    "bert": bert.BERT,
    "roberta": bert.ROBERTA,
}
_BY_MODEL_TYPE = {
    model_type: family for family in FAMILIES.values() for model_type in family.model_types
}


def family_for(hf_config: Any) -> Family:
    """The family of an HF config (a transformers config object, its dict, a `config.json` path
    or a checkpoint directory), by its `model_type`; ValueError for one we do not convert."""
    model_type = read_hf_config(hf_config).get("model_type")
    if model_type not in _BY_MODEL_TYPE:
        raise ValueError(
            f"HF model_type {model_type!r} has no converter; supported: {sorted(_BY_MODEL_TYPE)}."
        )
    if model_type in ("bert", "roberta"):
        return bert.family_for_hf(hf_config)  # One table per architecture (its head).
    return _BY_MODEL_TYPE[model_type]


def workdir_config(hf_config: Any) -> dict[str, dict[str, Any]]:
    """Config sections -> fields a converted workdir needs besides the model's
    `TransformerConfig` and family (BERT / RoBERTa: their head, token types and task); {}."""
    if read_hf_config(hf_config).get("model_type") in ("bert", "roberta"):
        return bert.workdir_config(hf_config)
    return {}
