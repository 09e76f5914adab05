"""Parity of t5x_like.interop.llama with Hugging Face LLaMA: RoPE layout, logits on padded batches,
greedy generation, exact round trips, and clear errors for what does not fit.

HF models are built from small random configs (nothing is downloaded) in float32 eval mode, with
weights at 5x LLaMA's init scale and every RMSNorm scale (and bias, where there are biases)
randomised, so that a swapped or mis-transposed weight cannot hide behind an initial value. Run
with `-s` to see the measured differences.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from interop import decoder_parity as parity
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.activations import ACT2FN
from transformers.models.llama import modeling_llama

from t5x_like.interop import llama
from t5x_like.layers import mlp  # its _ACTIVATION_FNS: what the model computes
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import apply_rope

VOCAB, D_MODEL = 128, 64
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=D_MODEL,
    intermediate_size=96,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=64,
    initializer_range=0.1,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=0,
)
LAYOUTS = {
    "gqa": dict(SMALL, num_key_value_heads=2),
    # Heads wider than d_model / heads, and a RoPE base of its own.
    "mha": dict(
        SMALL,
        num_key_value_heads=4,
        head_dim=32,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        rms_norm_eps=1e-5,
    ),
    # A tied (unscaled) head, one KV head, biases on every projection, and a GeGLU MLP.
    "tied_mqa_bias_geglu": dict(
        SMALL,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        hidden_act="gelu_pytorch_tanh",
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with parity.single_torch_thread():
        yield


@dataclasses.dataclass(frozen=True)
class Reference:
    """A random HF model, its state dict as numpy, our config for it, and its logits."""

    hf_model: LlamaForCausalLM
    state: dict[str, np.ndarray]
    config: TransformerConfig
    logits: np.ndarray


@functools.cache
def _reference(layout: str) -> Reference:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LAYOUTS[layout])).eval()
    parity.randomise_hf_norms_and_biases(model)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    config = llama.config_from_hf(model.config)
    return Reference(model, state, config, parity.hf_logits(model))


def test_rope_is_hf_llama_rotate_half_layout():
    """Our apply_rope equals HF's rotary embedding (inv_freq, cos/sin, rotate_half)."""
    hf_config = LlamaConfig(**LAYOUTS["mha"])
    rotary = modeling_llama.LlamaRotaryEmbedding(hf_config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 40, 32)).astype(np.float32)  # [B, heads, L, head_dim]
    positions = np.stack([np.arange(40), np.arange(40)[::-1] + 7])
    cos, sin = rotary(torch.from_numpy(x), torch.from_numpy(positions))
    theirs, _ = modeling_llama.apply_rotary_pos_emb(
        torch.from_numpy(x), torch.from_numpy(x), cos, sin
    )
    ours = apply_rope(jnp.asarray(x.transpose(0, 2, 1, 3)), jnp.asarray(positions), 1000.0)
    diff = np.abs(np.asarray(ours).transpose(0, 2, 1, 3) - theirs.numpy()).max()
    print(f"\n[llama] RoPE: max|diff| {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_from_hf_and_back(layout):
    ref, hf = _reference(layout), LAYOUTS[layout]
    config = ref.config
    assert (config.position, config.norm) == ("rope", "rmsnorm")
    assert (
        config.activation
        == {"silu": "swiglu", "gelu_pytorch_tanh": "geglu"}[hf.get("hidden_act", "silu")]
    )
    assert config.kv_heads == hf["num_key_value_heads"]
    assert config.qkv_dim == hf.get("head_dim", D_MODEL // 4)
    assert config.rope_theta == hf.get("rope_parameters", {}).get("rope_theta", 10_000.0)
    assert config.tie_embeddings == hf.get("tie_word_embeddings", False)
    assert config.use_bias == hf.get("attention_bias", False)
    assert not config.scale_tied_logits
    assert llama.config_from_hf(llama.hf_config_from(config)) == config
    assert llama.config_from_hf(llama.hf_config_dict(config)) == config
    # A transformers 4 config.json: top-level rope_theta and rope_scaling instead.
    legacy = ref.hf_model.config.to_dict()
    legacy.update(rope_theta=legacy.pop("rope_parameters")["rope_theta"], rope_scaling=None)
    assert llama.config_from_hf(legacy) == config
    assert llama.config_from_hf(legacy, scan_layers=True).scan_layers


@pytest.mark.parametrize("hf_act", sorted(llama.GATED_ACTIVATIONS))
def test_accepted_activations_equal_ours(hf_act):
    """Each accepted hidden_act computes what the gate of our mapped gated MLP computes."""
    config = llama.config_from_hf(
        {**_reference("gqa").hf_model.config.to_dict(), "hidden_act": hf_act}
    )
    assert llama.config_from_hf(llama.hf_config_dict(config)) == config
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    theirs = ACT2FN[hf_act](torch.from_numpy(x)).numpy()
    ours = np.asarray(mlp._ACTIVATION_FNS[config.activation](jnp.asarray(x)))
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_imported_weights_match_hf(layout):
    ref = _reference(layout)
    params = llama.import_llama(ref.hf_model.state_dict(), ref.config)  # torch tensors
    parity.assert_logits_parity(
        parity.our_logits(params, ref.config), ref.logits, f"[llama {layout}] HF->ours"
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_generation_matches_hf(layout):
    ref = _reference(layout)
    params = llama.import_llama(ref.state, ref.config)
    theirs = parity.hf_greedy(ref.hf_model)
    ours = parity.our_greedy(params, ref.config)
    print(f"\n[llama {layout}] greedy: {np.mean(ours == theirs):.0%} of {theirs.size} tokens match")
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(theirs)) > 3  # not a degenerate repetition of one token


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kv_cache_generation_matches_hf(layout):
    ref = _reference(layout)
    params = llama.import_llama(ref.state, ref.config)
    theirs = parity.hf_greedy(ref.hf_model)
    ours = parity.our_cached_greedy(params, ref.config)
    print(
        f"\n[llama {layout}] decoding.generate: {np.mean(ours == theirs):.0%} of "
        f"{theirs.size} tokens match"
    )
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_import_export_round_trip_is_exact(layout):
    ref = _reference(layout)
    exported = llama.export_llama(llama.import_llama(ref.state, ref.config), ref.config)
    parity.assert_state_dicts_equal(exported, ref.state)  # every key, in HF's order


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_of_our_params_loads_strictly_into_hf(layout):
    config = _reference(layout).config
    params = parity.random_params(config)
    hf_model = LlamaForCausalLM(llama.hf_config_from(config)).eval()
    exported = llama.export_llama(params, config)
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    parity.assert_logits_parity(
        parity.our_logits(params, config), parity.hf_logits(hf_model), f"[llama {layout}] ours->HF"
    )


@pytest.mark.parametrize("layout", ["gqa", "tied_mqa_bias_geglu"])
def test_saved_checkpoint_loads_with_from_pretrained(layout, tmp_path):
    ref = _reference(layout)
    params = llama.import_llama(ref.state, ref.config)
    llama.save_hf_checkpoint(params, ref.config, tmp_path)
    hf_model = LlamaForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert hf_model.dtype == torch.float32
    tied = hf_model.lm_head.weight is hf_model.model.embed_tokens.weight
    assert tied == ref.config.tie_embeddings
    np.testing.assert_allclose(parity.hf_logits(hf_model), ref.logits, atol=1e-6, rtol=0)
    # And back, from the directory alone, without torch.
    config = llama.config_from_hf(tmp_path)
    assert config == ref.config
    parity.assert_trees_equal(llama.import_llama(tmp_path, config), params)


def test_scanned_import_matches_unscanned():
    ref = _reference("gqa")
    config = dataclasses.replace(ref.config, scan_layers=True)
    scanned = llama.import_llama(ref.state, config)
    attention = scanned["decoder"]["layers"]["self_attention"]
    assert attention["key"]["kernel"].shape == (2, D_MODEL, 2, 16)
    assert scanned["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (2, D_MODEL, 96)
    logits = parity.our_logits(scanned, config)
    parity.assert_logits_parity(logits, ref.logits, "[llama gqa, scanned] HF->ours")
    unscanned = parity.our_logits(llama.import_llama(ref.state, ref.config), ref.config)
    np.testing.assert_allclose(logits, unscanned, atol=1e-5, rtol=0)
    parity.assert_state_dicts_equal(llama.export_llama(scanned, config), ref.state)


def test_checkpoint_variants_import_identically():
    """A bare `LlamaModel` state dict (no `model.` prefix) with the per-layer `inv_freq` buffers
    of older checkpoints, and a tied checkpoint without `lm_head.weight`."""
    ref = _reference("gqa")
    bare = {k.removeprefix("model."): v for k, v in ref.state.items()}
    for i in range(2):
        bare[f"layers.{i}.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
    expected = llama.import_llama(ref.state, ref.config)
    parity.assert_trees_equal(llama.import_llama(bare, ref.config), expected)

    tied = _reference("tied_mqa_bias_geglu")
    headless = {k: v for k, v in tied.state.items() if k != "lm_head.weight"}
    parity.assert_trees_equal(
        llama.import_llama(headless, tied.config), llama.import_llama(tied.state, tied.config)
    )


def _import_error(state, config=None) -> str:
    with pytest.raises(ValueError) as info:
        llama.import_llama(state, config or _reference("gqa").config)
    return str(info.value)


def test_import_errors_name_the_key_and_expected_shape():
    state = _reference("gqa").state
    k_proj = "model.layers.1.self_attn.k_proj.weight"
    message = _import_error({**state, k_proj: np.zeros((64, 64), np.float32)})
    assert f"{k_proj!r}: expected shape (32, 64), got (64, 64)" in message  # 2 KV heads

    up = "model.layers.0.mlp.up_proj.weight"
    message = _import_error({k: v for k, v in state.items() if k != up})
    assert f"missing {up!r} (expected shape (96, 64))" in message

    message = _import_error({**state, "model.layers.0.self_attn.q_proj.bias": np.zeros(64)})
    assert "unexpected 'model.layers.0.self_attn.q_proj.bias' (shape (64,))" in message

    # A checkpoint read with MHA: every K/V projection has the wrong shape.
    mha = dataclasses.replace(_reference("gqa").config, num_kv_heads=None)
    message = _import_error(state, mha)
    assert "0 missing, 0 unexpected, 4 of the wrong shape" in message

    tied = _reference("tied_mqa_bias_geglu")
    different = {**tied.state, "lm_head.weight": tied.state["lm_head.weight"] + 1.0}
    message = _import_error(different, tied.config)
    assert "'lm_head.weight' differs from 'model.embed_tokens.weight'" in message


@pytest.mark.parametrize(
    "change,match",
    [
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 8.0}},
            "rope_parameters with rope_type 'yarn' is not supported",
        ),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type 'linear'"),
        (
            {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
            "partial_rotary_factor=0.5",
        ),
        ({"attention_bias": True}, "attention_bias=True with mlp_bias=False is not supported"),
        ({"mlp_bias": True}, "attention_bias=False with mlp_bias=True"),
        ({"hidden_act": "gelu"}, "erf GELU"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
        ({"model_type": "mistral"}, "model_type 'mistral' is not a LLaMA config"),
    ],
)
def test_config_from_hf_rejects_unsupported_settings(change, match):
    hf = {**_reference("gqa").hf_model.config.to_dict(), **change}
    with pytest.raises(ValueError, match=match):
        llama.config_from_hf(hf)


def test_export_rejects_non_llama_configs_and_mismatched_params():
    ref = _reference("gqa")
    gpt2_like = dataclasses.replace(ref.config, position="learned", norm="layernorm")
    with pytest.raises(ValueError, match=r"position='learned' \(LLaMA: 'rope'\).*norm='layernorm'"):
        llama.export_llama({}, gpt2_like)
    with pytest.raises(ValueError, match="activation='gelu'"):
        llama.hf_config_dict(dataclasses.replace(ref.config, activation="gelu"))
    # A scaled tied head exports, its scale folded into the final norm (test_hf_export.py).
    scaled = dataclasses.replace(ref.config, tie_embeddings=True, scale_tied_logits=True)
    assert llama.hf_config_dict(scaled)["tie_word_embeddings"]
    params = llama.import_llama(ref.state, ref.config)
    del params["logits"]
    with pytest.raises(ValueError, match=r"missing 'logits/kernel' \(expected shape \(64, 128\)\)"):
        llama.export_llama(params, ref.config)
