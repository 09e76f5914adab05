"""Parity of Gemma 2 and Gemma 3 (text) with transformers: tanh soft-capping of attention and
final logits, four norms per layer, sliding-window layers alternating with global ones,
`query_pre_attn_scalar`, and for Gemma 3 q/k norms with a RoPE base of its own on the local
layers.

Per family: a tiny random HF model built in the test -> import -> f32 logits within 1e-5 of
transformers -> 20 greedy tokens of `decoding.generate` (KV cache: the per-layer windows hold
there too) equal `generate()`'s -> `save_hf_checkpoint` -> `from_pretrained` loads it and agrees.
The same with scanned layers (one scanned body serves local and global layers). Each distinctive
setting is shown to matter. Run with `-s` to see the measured differences.
"""

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch
import transformers
from interop import decoder_parity as parity
from testutil import load_script
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from t5x_like.interop import common, gemma2, gemma3, registry

TOLERANCE = 1e-5
SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=64,
    initializer_range=0.1,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
    # The batch's rows are up to 28 tokens: a window of 5 and the caps are exercised.
    sliding_window=5,
    query_pre_attn_scalar=24,
)
CASES = {
    # Gemma 2's default pattern: sliding, full, sliding, full.
    "gemma2": (
        "Gemma2Config",
        dict(SMALL, num_hidden_layers=4, attn_logit_softcapping=2.0, final_logit_softcapping=0.5),
    ),
    # Gemma 3: two local layers per global one, local RoPE base 1e4 vs 1e6, q/k norms; with the
    # (optional in Gemma 3) soft-capping off.
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            SMALL,
            num_hidden_layers=3,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        ),
    ),
}
# What each case's distinctive settings are, turned off one at a time: each must change logits.
DISTINCTIVE = {
    "gemma2": (
        ("attn_logit_softcap", None),
        ("final_logit_softcap", None),
        ("global_every", None),
        ("query_pre_attn_scalar", None),
    ),
    "gemma3": (("rope_local_theta", None), ("global_every", None)),
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
    config_class, hf_config = CASES[case]
    torch.manual_seed(0)
    hf_config = getattr(transformers, config_class)(**hf_config)
    hf_config._attn_implementation = "eager"  # The one that soft-caps.
    architecture = {"gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}[case]
    model = getattr(transformers, architecture)(hf_config).eval()
    parity.randomise_hf_norms_and_biases(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):  # x * (1 + w): scales around 1, as elsewhere.
                param.sub_(1.0)
        # Embeddings at std 0.1 after the sqrt(d) = 8 scale (see test_llama_like_families).
        model.model.embed_tokens.weight.div_(SMALL["hidden_size"] ** 0.5)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    family = registry.family_for(model.config)
    assert family is {"gemma2": gemma2.GEMMA2, "gemma3": gemma3.GEMMA3}[case]
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
    assert config.post_branch_norm and config.sliding_window == 5
    assert config.global_every == {"gemma2": 2, "gemma3": 3}[case]
    assert family.config_from_hf(family.hf_config_dict(config)) == config

    params = family.import_weights(ref.state, config)
    ours = parity.our_logits(params, config)
    diff = _max_diff(ours, ref.logits)
    print(
        f"\n[{case}] HF->ours: max|logits diff| {diff:.2e} (max|logits| {np.abs(ours).max():.1f})"
    )
    assert diff <= TOLERANCE
    for field, off in DISTINCTIVE[case]:
        plain = dataclasses.replace(config, **{field: off})
        assert _max_diff(parity.our_logits(params, plain), ref.logits) > 1e-3, field

    theirs = parity.hf_greedy(ref.hf_model)
    greedy = parity.our_cached_greedy(params, config)
    print(f"[{case}] decoding.generate: {np.mean(greedy == theirs):.0%} of {theirs.size} match")
    np.testing.assert_array_equal(greedy, theirs)
    assert len(np.unique(theirs)) > 3  # not a degenerate repetition of one token

    exported = family.export_weights(params, config)
    parity.assert_state_dicts_equal(exported, {k: ref.state[k] for k in ref.state if k in exported})
    family.save_hf_checkpoint(params, config, tmp_path)
    architecture = getattr(transformers, family.architecture)
    reloaded = architecture.from_pretrained(
        tmp_path, local_files_only=True, attn_implementation="eager"
    ).eval()
    diff = _max_diff(parity.hf_logits(reloaded), ours)
    print(f"[{case}] ours->HF (from_pretrained): max|logits diff| {diff:.2e}")
    assert diff <= TOLERANCE
    assert family.config_from_hf(tmp_path) == config


@pytest.mark.parametrize("case", sorted(CASES))
def test_scanned_layers_alternate_too(case):
    """Scanned, each layer's kind is a scanned input: same logits and cached greedy tokens."""
    ref = _reference(case)
    config = dataclasses.replace(ref.config, scan_layers=True)
    params = ref.family.import_weights(ref.state, config)
    kernel = common.flatten_params(params)[("decoder", "layers", "self_attention", "out", "kernel")]
    assert kernel.shape[0] == config.num_layers  # stacked: one scanned body
    diff = _max_diff(parity.our_logits(params, config), ref.logits)
    print(f"\n[{case}, scanned] HF->ours: max|logits diff| {diff:.2e}")
    assert diff <= TOLERANCE
    np.testing.assert_array_equal(
        parity.our_cached_greedy(params, config), parity.hf_greedy(ref.hf_model)
    )


@pytest.mark.parametrize(
    "family, change, match",
    [
        (
            gemma2.GEMMA2,
            {"layer_types": ["full_attention", "sliding_attention"] * 2},
            r"layer_types=\[.*\] is not supported: ours repeat k - 1 sliding layers then one full",
        ),
        (gemma2.GEMMA2, {"attn_logit_softcapping": -1.0}, "attn_logit_softcapping=-1.0 must be"),
        (
            gemma3.GEMMA3,
            {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 8.0}}},
            r"rope_parameters\['sliding_attention'\] with rope_type 'linear' is not supported",
        ),
        (
            gemma3.GEMMA3,
            {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0}}},
            "rope_parameters with rope_type 'linear' is not supported",
        ),
        (
            gemma3.GEMMA3,
            {"use_bidirectional_attention": True},
            "use_bidirectional_attention=True is not supported",
        ),
    ],
)
def test_unsupported_config_fields_are_named(family, change, match):
    hf = {**SMALL, "num_hidden_layers": 4, "model_type": family.model_types[0], **change}
    with pytest.raises(ValueError, match=match):
        family.config_from_hf(hf)


def test_other_families_refuse_gemma2_settings_at_export():
    config = _reference("gemma2").config
    with pytest.raises(ValueError, match=r"post_branch_norm=True \(Gemma: False\)"):
        registry.FAMILIES["gemma"].hf_config_dict(config)
    with pytest.raises(ValueError, match=r"attn_logit_softcap=2.0 \(Mistral: None\)"):
        registry.FAMILIES["mistral"].hf_config_dict(config)
    with pytest.raises(ValueError, match=r"qk_norm=False \(Gemma 3: True\)"):
        gemma3.hf_config_dict(config)


def test_workdir_round_trip(tmp_path):
    """convert_checkpoint --from_hf of a saved Gemma 2 (with a tokenizer) -> a workdir whose
    config.json carries the new fields -> --to_hf: transformers loads it and its logits agree."""
    ref = _reference("gemma2")
    hf_dir, workdir, out = tmp_path / "hf", tmp_path / "workdir", tmp_path / "out"
    hf_dir.mkdir()
    ref.hf_model.save_pretrained(hf_dir)
    # A word-level tokenizer: smaller than the tiny model's 128 ids (a byte-level BPE is not).
    words = ["<pad>", "<eos>", "<bos>", "<unk>", "gemma", "two", "text"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    )
    script = load_script("convert_checkpoint")
    script.convert_from_hf(str(hf_dir), str(workdir))
    saved = json.loads((workdir / "config.json").read_text())["model"]
    assert (saved["global_every"], saved["attn_logit_softcap"], saved["post_branch_norm"]) == (
        2,
        2.0,
        True,
    )
    assert script.convert_to_hf(str(workdir), str(out)) == "Gemma2ForCausalLM"
    reloaded = transformers.Gemma2ForCausalLM.from_pretrained(
        out, attn_implementation="eager"
    ).eval()
    diff = _max_diff(parity.hf_logits(reloaded), ref.logits)
    print(f"\n[gemma2] HF -> workdir -> HF: max|logits diff| {diff:.2e}")
    assert diff <= TOLERANCE


def test_activation_is_read_where_transformers_reads_it():
    """Gemma 1's modeling reads hidden_act (whose legacy "gelu" GemmaConfig rewrites to the tanh
    GELU); Gemma 2 / 3's read hidden_activation."""
    both = {**SMALL, "num_hidden_layers": 2, "hidden_act": "gelu"}
    gemma1 = registry.FAMILIES["gemma"].config_from_hf(
        {**both, "model_type": "gemma", "sliding_window": None}
    )
    assert gemma1.activation == "geglu"
    tanh = {**both, "hidden_activation": "gelu_pytorch_tanh", "model_type": "gemma2"}
    assert gemma2.config_from_hf(tanh).activation == "geglu"
    with pytest.raises(ValueError, match="hidden_activation='gelu' is not supported"):
        gemma2.config_from_hf({**tanh, "hidden_activation": "gelu"})  # the erf GELU
    assert transformers.GemmaConfig(hidden_act="gelu").hidden_act == "gelu_pytorch_tanh"
