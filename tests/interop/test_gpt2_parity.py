"""Parity of t5x_like.interop.gpt2 with Hugging Face GPT-2: logits on padded batches, greedy
generation, exact round trips, Hub-style checkpoints, and clear errors for what does not fit.

HF models are built from small random configs (nothing is downloaded) in float32 eval mode, with
weights at 5x GPT-2's init scale and every LayerNorm scale and bias randomised, so that a swapped
or mis-transposed weight cannot hide behind an initial value. Run with `-s` to see the measured
differences.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from interop import decoder_parity as parity
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import ACT2FN

from t5x_like.interop import gpt2
from t5x_like.layers import mlp  # its _ACTIVATION_FNS: what the model computes
from t5x_like.layers.config import TransformerConfig

VOCAB, D_MODEL = 128, 64
SMALL = dict(
    vocab_size=VOCAB,
    n_embd=D_MODEL,
    n_head=4,
    n_layer=2,
    n_positions=48,
    initializer_range=0.1,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=0,
)
LAYOUTS = {
    "gpt2": dict(SMALL),  # tied head, gelu_new
    # An untied head, a ReLU MLP of its own width and unscaled attention logits.
    "untied_relu_unscaled": dict(
        SMALL,
        tie_word_embeddings=False,
        activation_function="relu",
        n_inner=96,
        scale_attn_weights=False,
        layer_norm_epsilon=1e-6,
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    with parity.single_torch_thread():
        yield


@dataclasses.dataclass(frozen=True)
class Reference:
    """A random HF model, its state dict as numpy, our config for it, and its logits."""

    hf_model: GPT2LMHeadModel
    state: dict[str, np.ndarray]
    config: TransformerConfig
    logits: np.ndarray


def _build(layout: str, **config_changes) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**LAYOUTS[layout], **config_changes)).eval()
    parity.randomise_hf_norms_and_biases(model)
    return model


@functools.cache
def _reference(layout: str) -> Reference:
    model = _build(layout)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    config = gpt2.config_from_hf(model.config)
    return Reference(model, state, config, parity.hf_logits(model))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_from_hf_and_back(layout):
    ref, hf = _reference(layout), LAYOUTS[layout]
    config = ref.config
    assert (config.position, config.norm, config.use_bias) == ("learned", "layernorm", True)
    assert config.tie_embeddings == hf.get("tie_word_embeddings", True)
    assert not config.scale_tied_logits
    assert config.scale_attention_logits == hf.get("scale_attn_weights", True)
    activation = hf.get("activation_function", "gelu_new")
    assert config.activation == {"gelu_new": "gelu", "relu": "relu"}[activation]
    assert config.mlp_dim == (hf.get("n_inner") or 4 * D_MODEL)
    assert (config.max_len, config.norm_eps) == (48, hf.get("layer_norm_epsilon", 1e-5))
    assert gpt2.config_from_hf(gpt2.hf_config_from(config)) == config
    assert gpt2.config_from_hf(gpt2.hf_config_dict(config)) == config
    assert gpt2.config_from_hf(ref.hf_model.config, scan_layers=True).scan_layers


@pytest.mark.parametrize("hf_act", sorted(gpt2._ACTIVATIONS))
def test_accepted_activations_equal_ours(hf_act):
    """Each accepted activation_function computes what our mapped activation computes."""
    config = gpt2.config_from_hf(
        {**_reference("gpt2").hf_model.config.to_dict(), "activation_function": hf_act}
    )
    assert gpt2.config_from_hf(gpt2.hf_config_dict(config)) == config
    x = np.linspace(-6, 6, 1001, dtype=np.float32)
    theirs = ACT2FN[hf_act](torch.from_numpy(x)).numpy()
    ours = np.asarray(mlp._ACTIVATION_FNS[config.activation](jnp.asarray(x)))
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_imported_weights_match_hf(layout):
    ref = _reference(layout)
    params = gpt2.import_gpt2(ref.hf_model.state_dict(), ref.config)  # torch tensors
    parity.assert_logits_parity(
        parity.our_logits(params, ref.config), ref.logits, f"[gpt2 {layout}] HF->ours"
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_generation_matches_hf(layout):
    ref = _reference(layout)
    params = gpt2.import_gpt2(ref.state, ref.config)
    theirs = parity.hf_greedy(ref.hf_model)
    ours = parity.our_greedy(params, ref.config)
    print(f"\n[gpt2 {layout}] greedy: {np.mean(ours == theirs):.0%} of {theirs.size} tokens match")
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(theirs)) > 3  # not a degenerate repetition of one token


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kv_cache_generation_matches_hf(layout):
    ref = _reference(layout)
    params = gpt2.import_gpt2(ref.state, ref.config)
    theirs = parity.hf_greedy(ref.hf_model)
    ours = parity.our_cached_greedy(params, ref.config)
    print(
        f"\n[gpt2 {layout}] decoding.generate: {np.mean(ours == theirs):.0%} of "
        f"{theirs.size} tokens match"
    )
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_import_export_round_trip_is_exact(layout):
    ref = _reference(layout)
    exported = gpt2.export_gpt2(gpt2.import_gpt2(ref.state, ref.config), ref.config)
    parity.assert_state_dicts_equal(exported, ref.state)  # every key, in HF's order


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_of_our_params_loads_strictly_into_hf(layout):
    config = _reference(layout).config
    params = parity.random_params(config)
    hf_model = GPT2LMHeadModel(gpt2.hf_config_from(config)).eval()
    exported = gpt2.export_gpt2(params, config)
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    parity.assert_logits_parity(
        parity.our_logits(params, config), parity.hf_logits(hf_model), f"[gpt2 {layout}] ours->HF"
    )


def test_saved_checkpoint_loads_with_from_pretrained(tmp_path):
    ref = _reference("gpt2")
    params = gpt2.import_gpt2(ref.state, ref.config)
    gpt2.save_hf_checkpoint(params, ref.config, tmp_path)
    hf_model = GPT2LMHeadModel.from_pretrained(tmp_path, local_files_only=True).eval()
    assert hf_model.dtype == torch.float32
    np.testing.assert_allclose(parity.hf_logits(hf_model), ref.logits, atol=1e-6, rtol=0)
    # And back, from the directory alone, without torch.
    config = gpt2.config_from_hf(tmp_path)
    assert config == dataclasses.replace(ref.config, dropout_rate=0.0)
    parity.assert_trees_equal(gpt2.import_gpt2(tmp_path, config), params)


def test_scanned_import_matches_unscanned():
    ref = _reference("untied_relu_unscaled")
    config = dataclasses.replace(ref.config, scan_layers=True)
    scanned = gpt2.import_gpt2(ref.state, config)
    attention = scanned["decoder"]["layers"]["self_attention"]
    assert attention["query"]["kernel"].shape == (2, D_MODEL, 4, 16)
    assert attention["key"]["bias"].shape == (2, 4, 16)
    logits = parity.our_logits(scanned, config)
    parity.assert_logits_parity(logits, ref.logits, "[gpt2 untied_relu_unscaled, scanned] HF->ours")
    unscanned = parity.our_logits(gpt2.import_gpt2(ref.state, ref.config), ref.config)
    np.testing.assert_allclose(logits, unscanned, atol=1e-5, rtol=0)
    parity.assert_state_dicts_equal(gpt2.export_gpt2(scanned, config), ref.state)


def test_hub_style_checkpoints_import_identically(tmp_path):
    """The Hub's GPT-2 layout: a bare `GPT2Model` state dict (no `transformer.` prefix, no
    `lm_head`) with per-layer causal-mask buffers, here stored as bf16 safetensors."""
    ref = _reference("gpt2")
    bare = {
        k.removeprefix("transformer."): v for k, v in ref.state.items() if k != "lm_head.weight"
    }
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in bare.items()}
    rounded = {f"transformer.{k}": v.float().numpy() for k, v in bf16.items()}
    expected = gpt2.import_gpt2(rounded, ref.config)
    for i in range(2):
        bf16[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 48, 48)).to(torch.bfloat16)
        bf16[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4).to(torch.bfloat16)
    safetensors.torch.save_file(bf16, tmp_path / "model.safetensors")
    parity.assert_trees_equal(gpt2.import_gpt2(tmp_path, ref.config), expected)


def test_reorder_and_upcast_attn_is_accepted_because_it_computes_the_same():
    """It only moves where eager attention applies 1/sqrt(head_dim) and upcasts to float32."""
    hf_model = _build("gpt2", reorder_and_upcast_attn=True, attn_implementation="eager")
    ref = _reference("gpt2")
    assert gpt2.config_from_hf(hf_model.config) == ref.config
    params = gpt2.import_gpt2(hf_model.state_dict(), ref.config)
    parity.assert_logits_parity(
        parity.our_logits(params, ref.config),
        parity.hf_logits(hf_model),
        "[gpt2 reorder_and_upcast_attn, eager] HF->ours",
    )


def _import_error(state, config=None) -> str:
    with pytest.raises(ValueError) as info:
        gpt2.import_gpt2(state, config or _reference("gpt2").config)
    return str(info.value)


def test_import_errors_name_the_key_and_expected_shape():
    state = _reference("gpt2").state
    c_attn = "transformer.h.1.attn.c_attn.weight"
    message = _import_error({**state, c_attn: state[c_attn][:, :64]})
    assert f"{c_attn!r}: expected shape (64, 192), got (64, 64)" in message

    ln = "transformer.h.0.ln_2.bias"
    message = _import_error({k: v for k, v in state.items() if k != ln})
    assert f"missing {ln!r} (expected shape (64,))" in message

    extra = "transformer.h.2.ln_1.weight"
    message = _import_error({**state, extra: np.ones(64, np.float32)})
    assert f"unexpected {extra!r} (shape (64,))" in message

    # An untied checkpoint read with a tied config: its own head differs from the embedding.
    untied = _reference("untied_relu_unscaled")
    tied_config = dataclasses.replace(untied.config, tie_embeddings=True)
    message = _import_error(untied.state, tied_config)
    assert "'lm_head.weight' differs from 'transformer.wte.weight'" in message


@pytest.mark.parametrize(
    "change,match",
    [
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
        ({"add_cross_attention": True}, "add_cross_attention=True is not supported"),
        ({"activation_function": "quick_gelu"}, "activation_function='quick_gelu'"),
        ({"model_type": "gpt_neo"}, "model_type 'gpt_neo' is not a GPT-2 config"),
    ],
)
def test_config_from_hf_rejects_unsupported_settings(change, match):
    hf = {**_reference("gpt2").hf_model.config.to_dict(), **change}
    with pytest.raises(ValueError, match=match):
        gpt2.config_from_hf(hf)


def test_erf_gelu_model_matches_transformers():
    """GPT-2's activation_function='gelu' (the erf GELU, our gelu_exact): whole-model logits."""
    model = _build("gpt2", activation_function="gelu")
    config = gpt2.config_from_hf(model.config)
    assert config.activation == "gelu_exact"
    assert gpt2.hf_config_dict(config)["activation_function"] == "gelu"
    params = gpt2.import_gpt2({k: v.numpy() for k, v in model.state_dict().items()}, config)
    parity.assert_logits_parity(
        parity.our_logits(params, config), parity.hf_logits(model), "GPT-2 erf gelu"
    )


def test_export_rejects_non_gpt2_configs_and_mismatched_params():
    ref = _reference("gpt2")
    llama_like = dataclasses.replace(ref.config, position="rope", use_bias=False, num_kv_heads=2)
    with pytest.raises(ValueError, match=r"position='rope' \(GPT-2: 'learned'\).*num_kv_heads=2"):
        gpt2.export_gpt2({}, llama_like)
    with pytest.raises(ValueError, match="scale_tied_logits=True"):
        gpt2.hf_config_dict(dataclasses.replace(ref.config, scale_tied_logits=True))
    # The LLaMA-like families' settings are refused, each named, not silently dropped.
    for field, value in (
        ("qk_norm", True),
        ("qkv_bias", True),
        ("sliding_window", 8),
        ("final_logit_softcap", 30.0),
        ("rope_scaling_factor", 8.0),
        ("scale_embeddings", True),
    ):
        with pytest.raises(ValueError, match=f"{field}={value!r} \\(GPT-2: "):
            gpt2.hf_config_dict(dataclasses.replace(ref.config, **{field: value}))
    params = gpt2.import_gpt2(ref.state, ref.config)
    params["decoder"]["layers_1"]["mlp"]["wi"]["bias"] = np.zeros(32, np.float32)
    with pytest.raises(
        ValueError, match=r"'decoder/layers_1/mlp/wi/bias': expected shape \(256,\)"
    ):
        gpt2.export_gpt2(params, ref.config)
