"""Parity of the LLaMA-like families with transformers: Llama 3 (llama3 RoPE scaling, tied head),
Mistral (sliding-window attention), Qwen2/2.5 (q/k/v biases, tied or not), Qwen3 (q/k RMSNorm).

Per family: a tiny random HF model built in the test -> import -> f32 logits within 1e-5 of
transformers -> 20 greedy tokens of `decoding.generate` (KV cache) equal `generate()`'s ->
`save_hf_checkpoint` -> `from_pretrained` loads it and its logits agree. Each family's distinctive
setting is shown to matter (turning it off changes the logits), and a config.json setting we do
not implement is refused naming the field. Run with `-s` to see the measured differences.
"""

import dataclasses
import functools

import numpy as np
import pytest
import torch
import transformers
from interop import decoder_parity as parity

from t5x_like.interop import gemma, llama, mistral, qwen2, qwen3, registry

TOLERANCE = 1e-5
SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    max_position_embeddings=64,
    initializer_range=0.1,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=0,
)
# name -> (family module, HF config class, HF config, (field, value) whose removal must matter)
CASES = {
    # Llama 3.2-style: llama3 scaling with a short original context, so that the batch's 28
    # positions reach the scaled and the blended wavelengths; tied head.
    "llama3_tied": (
        llama,
        "LlamaConfig",
        dict(
            SMALL,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500_000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        ("rope_scaling_factor", None),
    ),
    "mistral": (mistral, "MistralConfig", dict(SMALL, sliding_window=5), ("sliding_window", None)),
    "qwen2_untied": (qwen2, "Qwen2Config", dict(SMALL), ("qkv_bias", False)),
    "qwen2_tied": (qwen2, "Qwen2Config", dict(SMALL, tie_word_embeddings=True), None),
    "qwen3": (qwen3, "Qwen3Config", dict(SMALL, head_dim=24), ("qk_norm", False)),
    # Gemma: sqrt(d) embedding scale, (1 + w) norms, GeGLU-tanh, head_dim != d / heads, tied.
    "gemma": (gemma, "GemmaConfig", dict(SMALL, head_dim=32), ("scale_embeddings", False)),
}


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with parity.single_torch_thread():
        yield


@dataclasses.dataclass(frozen=True)
class Reference:
    family: object
    hf_model: object
    state: dict
    config: object
    logits: np.ndarray


@functools.cache
def _reference(case: str) -> Reference:
    module, config_class, hf_config, _ = CASES[case]
    torch.manual_seed(0)
    hf_config = getattr(transformers, config_class)(**hf_config)
    architecture = config_class.replace("Config", "ForCausalLM")
    model = getattr(transformers, architecture)(hf_config).eval()
    parity.randomise_hf_norms_and_biases(model)
    if module is gemma:  # Its norms compute x * (1 + w): the same scales as the others' x * w.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.sub_(1.0)
            # Embeddings at std 0.1 after the sqrt(d) = 8 scale, as the others' are before it:
            # else each token's own embedding dominates the tied head and greedy decoding only
            # repeats the last token.
            model.model.embed_tokens.weight.div_(SMALL["hidden_size"] ** 0.5)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    family = registry.family_for(model.config)
    assert family is getattr(module, module.__name__.rsplit(".", 1)[-1].upper())
    config = family.config_from_hf(model.config)
    return Reference(family, model, state, config, parity.hf_logits(model))


def _max_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    real = parity.batch(ours.shape[-1])[1].astype(bool)
    assert np.isfinite(ours[real]).all()
    return float(np.abs(ours[real] - theirs[real]).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_logits_generation_and_export(case, tmp_path):
    ref = _reference(case)
    family, config = ref.family, ref.config
    assert family.config_from_hf(family.hf_config_dict(config)) == config

    params = family.import_weights(ref.state, config)
    ours = parity.our_logits(params, config)
    diff = _max_diff(ours, ref.logits)
    print(
        f"\n[{case}] HF->ours: max|logits diff| {diff:.2e} (max|logits| {np.abs(ours).max():.1f})"
    )
    assert diff <= TOLERANCE

    _, _, _, distinctive = CASES[case]
    if distinctive is not None:  # The family's own setting is exercised by this batch.
        field, off = distinctive
        plain = dataclasses.replace(config, **{field: off})
        plain_params = params
        if field in ("qkv_bias", "qk_norm"):  # Drop the params the setting adds.
            plain_params = family.import_weights(ref.state, config)
            for layer in range(config.num_layers):
                attention = plain_params["decoder"][f"layers_{layer}"]["self_attention"]
                if field == "qkv_bias":
                    for name in ("query", "key", "value"):
                        del attention[name]["bias"]
                else:
                    del attention["query_norm"], attention["key_norm"]
        assert _max_diff(parity.our_logits(plain_params, plain), ref.logits) > 1e-3

    theirs = parity.hf_greedy(ref.hf_model)
    greedy = parity.our_cached_greedy(params, config)
    print(f"[{case}] decoding.generate: {np.mean(greedy == theirs):.0%} of {theirs.size} match")
    np.testing.assert_array_equal(greedy, theirs)
    assert len(np.unique(theirs)) > 3  # not a degenerate repetition of one token

    parity.assert_state_dicts_equal(
        family.export_weights(params, config),
        {k: v for k, v in ref.state.items() if k in family.export_weights(params, config)},
    )
    family.save_hf_checkpoint(params, config, tmp_path)
    architecture = getattr(transformers, family.architecture)
    reloaded = architecture.from_pretrained(tmp_path, local_files_only=True).eval()
    diff = _max_diff(parity.hf_logits(reloaded), ours)
    print(f"[{case}] ours->HF (from_pretrained): max|logits diff| {diff:.2e}")
    assert diff <= TOLERANCE
    assert family.config_from_hf(tmp_path) == config


@pytest.mark.parametrize(
    "family, change, match",
    [
        (qwen2.QWEN2, {"use_sliding_window": True}, "use_sliding_window=True is not supported"),
        (
            qwen3.QWEN3,
            {"layer_types": ["full_attention", "sliding_attention"]},
            r"layer_types marks layers \[1\] as 'sliding_attention'",
        ),
        (qwen3.QWEN3, {"attention_bias": True}, "attention_bias=True is not supported for Qwen3"),
        (mistral.MISTRAL, {"attention_bias": True}, "attention_bias=True is not supported"),
        (
            gemma.GEMMA,
            {"use_bidirectional_attention": True},
            "use_bidirectional_attention=True is not supported for Gemma",
        ),
        (
            llama.LLAMA,
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
            "rope_parameters with rope_type 'yarn' is not supported",
        ),
        (
            llama.LLAMA,
            {"rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
            "rope_parameters of rope_type 'llama3' lacks 'low_freq_factor'",
        ),
    ],
)
def test_unsupported_config_fields_are_named(family, change, match):
    hf = {**SMALL, "model_type": family.model_types[0], **change}
    with pytest.raises(ValueError, match=match):
        family.config_from_hf(hf)


def test_export_names_the_settings_a_family_cannot_express():
    config = _reference("qwen3").config
    with pytest.raises(ValueError, match=r"qk_norm=True \(LLaMA: False\)"):
        llama.hf_config_dict(config)
    with pytest.raises(ValueError, match=r"qkv_bias=False \(Qwen2: True\)"):
        qwen2.hf_config_dict(dataclasses.replace(config, qk_norm=False))
    mistral_config = _reference("mistral").config
    with pytest.raises(ValueError, match=r"sliding_window=5 \(Qwen3: None\)"):
        qwen3.hf_config_dict(dataclasses.replace(mistral_config, qk_norm=True))


def test_generation_stops_at_any_of_several_eos_ids():
    """Llama 3 ends a turn with <|eot_id|> and a text with <|end_of_text|>: either ends a row."""
    ref = _reference("llama3_tied")
    params = parity.nn.meta.unbox(ref.family.import_weights(ref.state, ref.config))
    full = parity.our_cached_greedy(params, ref.config)
    ids, mask = parity.prompts(ref.config.vocab_size)
    # Two tokens of row 0's continuation as the EOS ids; each row stops at its first of them.
    eos = (int(full[0, 12]), int(full[0, 5]))
    model = parity.DecoderOnlyTransformer(ref.config)
    out = parity.decoding.generate(
        model,
        params,
        {"tokens": ids, "segment_ids": mask},
        parity.decoding.DecodeConfig(strategy="greedy", max_new_tokens=parity.NEW_TOKENS),
        eos_id=eos,
    )
    for row in range(full.shape[0]):
        hits = [i for i, t in enumerate(full[row]) if t in eos]
        expected = hits[0] + 1 if hits else parity.NEW_TOKENS
        assert int(out.lengths[row]) == expected
        np.testing.assert_array_equal(out.tokens[row, :expected], full[row, :expected])
    assert int(out.lengths[0]) <= 6
