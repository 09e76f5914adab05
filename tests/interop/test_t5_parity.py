"""Parity of t5x_like.interop.t5 with Hugging Face T5: logits, encoder outputs, exact round trips,
and clear errors for checkpoints that do not fit.

HF models are built from small random configs (nothing is downloaded) in float32 eval mode, with
every norm scale and relative-bias table randomised too, so that a swapped or mis-transposed
weight cannot hide behind an initial value. Run with `-s` to see the measured differences.
"""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from t5x_like.interop import common, t5
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import relative_position_bucket
from t5x_like.models.encoder_decoder import EncoderDecoderTransformer

TOLERANCE = 1e-4
VOCAB, D_MODEL = 128, 64
SMALL = dict(vocab_size=VOCAB, d_model=D_MODEL, d_kv=16, num_heads=4, d_ff=128, num_layers=2)
LAYOUTS = {
    "v1_1": dict(SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "v1_0": dict(SMALL, feed_forward_proj="relu", tie_word_embeddings=True),
    # A deeper decoder, and few buckets with a short max_distance so that this batch's lengths
    # reach the logarithmic buckets and the shared far bucket.
    "v1_1_deep_decoder": dict(
        SMALL,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        num_decoder_layers=3,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=12,
    ),
}
ENCODER_LENGTHS = (20, 13, 6)  # rows 1 and 2 are right-padded
DECODER_LENGTH = 11


@dataclasses.dataclass(frozen=True)
class Reference:
    """A random HF model, its state dict as numpy, our config for it, and its outputs."""

    hf_model: T5ForConditionalGeneration
    state: dict[str, np.ndarray]
    config: TransformerConfig
    logits: np.ndarray
    encoded: np.ndarray


def _batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoder ids, HF attention mask (1 real, 0 pad), decoder ids."""
    rng = np.random.default_rng(0)
    length = max(ENCODER_LENGTHS)
    mask = (np.arange(length)[None] < np.array(ENCODER_LENGTHS)[:, None]).astype(np.int32)
    encoder_ids = rng.integers(2, VOCAB, (len(ENCODER_LENGTHS), length)) * mask
    decoder_ids = rng.integers(2, VOCAB, (len(ENCODER_LENGTHS), DECODER_LENGTH))
    decoder_ids[:, 0] = 0  # T5's decoder start token
    return encoder_ids.astype(np.int32), mask, decoder_ids.astype(np.int32)


def _hf_forward(model: T5ForConditionalGeneration) -> tuple[np.ndarray, np.ndarray]:
    encoder_ids, mask, decoder_ids = (torch.from_numpy(x).long() for x in _batch())
    with torch.no_grad():
        out = model(input_ids=encoder_ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


@functools.cache
def _jitted_forward(config: TransformerConfig):
    model = EncoderDecoderTransformer(config)

    @jax.jit
    def forward(params, encoder_ids, segment_ids, decoder_ids):
        variables = {"params": params}
        logits = model.apply(variables, encoder_ids, decoder_ids, encoder_segment_ids=segment_ids)
        encoded = model.apply(variables, encoder_ids, segment_ids, method="encode")
        return logits, encoded

    return forward


def _our_forward(params, config: TransformerConfig) -> tuple[np.ndarray, np.ndarray]:
    encoder_ids, mask, decoder_ids = _batch()
    # HF's attention_mask is exactly our segment ids for unpacked rows.
    logits, encoded = _jitted_forward(config)(nn.meta.unbox(params), encoder_ids, mask, decoder_ids)
    return np.asarray(logits), np.asarray(encoded)


@functools.cache
def _reference(layout: str) -> Reference:
    hf_config = T5Config(**LAYOUTS[layout], dropout_rate=0.0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                param.normal_(0.0, 0.5)
        if not hf_config.scale_decoder_outputs:
            # transformers 5 ties lm_head to `shared` even for v1.1; real v1.1 checkpoints have
            # their own head (from_pretrained unties it), so give this one its own too.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D_MODEL) * D_MODEL**-0.5)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    return Reference(model, state, t5.config_from_hf(hf_config), *_hf_forward(model))


def _max_diffs(ours: tuple[np.ndarray, np.ndarray], hf: tuple[np.ndarray, np.ndarray]):
    """Max |difference| of logits, and of encoder outputs at real (non-pad) positions."""
    (logits, encoded), (hf_logits, hf_encoded) = ours, hf
    assert np.isfinite(logits).all() and np.isfinite(encoded).all()
    real = _batch()[1].astype(bool)
    return (
        float(np.abs(logits - hf_logits).max()),
        float(np.abs(encoded[real] - hf_encoded[real]).max()),
    )


def _assert_parity(ours, hf, label: str) -> None:
    logits_diff, encoded_diff = _max_diffs(ours, hf)
    print(f"\n{label}: max|logits diff| {logits_diff:.2e}, max|encoder diff| {encoded_diff:.2e}")
    assert logits_diff <= TOLERANCE
    assert encoded_diff <= TOLERANCE


def _assert_trees_equal(a, b) -> None:
    flat_a, flat_b = common.flatten_params(a), common.flatten_params(b)
    assert flat_a.keys() == flat_b.keys()
    for path, x in flat_a.items():
        np.testing.assert_array_equal(x, flat_b[path], err_msg="/".join(path))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_from_hf_and_back(layout):
    ref, hf = _reference(layout), LAYOUTS[layout]
    config = ref.config
    assert config.activation == {"gated-gelu": "geglu", "relu": "relu"}[hf["feed_forward_proj"]]
    assert config.tie_embeddings == hf["tie_word_embeddings"]
    assert config.decoder_layers == hf.get("num_decoder_layers", hf["num_layers"])
    assert (config.head_dim, config.mlp_dim, config.position) == (16, 128, "relative")
    assert t5.config_from_hf(t5.hf_config_from(config)) == config
    assert t5.config_from_hf(t5.hf_config_dict(config)) == config
    # A transformers 4 (Hub) config.json marks v1.1 only with tie_word_embeddings=False.
    legacy = ref.hf_model.config.to_dict()
    del legacy["scale_decoder_outputs"]
    legacy["tie_word_embeddings"] = hf["tie_word_embeddings"]
    assert t5.config_from_hf(legacy) == config
    assert t5.config_from_hf(legacy, scan_layers=True).scan_layers


@pytest.mark.parametrize("layout", LAYOUTS)
def test_imported_weights_match_hf(layout):
    ref = _reference(layout)
    params = t5.import_t5(ref.hf_model.state_dict(), ref.config)  # torch tensors
    _assert_parity(
        _our_forward(params, ref.config), (ref.logits, ref.encoded), f"[{layout}] HF->ours"
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_import_export_round_trip_is_exact(layout):
    ref = _reference(layout)
    exported = t5.export_t5(t5.import_t5(ref.state, ref.config), ref.config)
    assert list(exported) == list(ref.state)  # every key, in HF's state_dict order
    for key, value in ref.state.items():
        assert exported[key].dtype == np.float32
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def _random_params(config: TransformerConfig, seed: int = 1):
    """Random params in our (logically boxed) tree, at init-like scales.

    Drawn with numpy into the boxes of an abstract `init`: XLA takes ~10 s to compile the
    model's real initialisers on a small CPU, and the values are all this test needs.
    """
    rng = np.random.default_rng(seed)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    model = EncoderDecoderTransformer(config)
    abstract = jax.eval_shape(model.init, jax.random.key(0), tokens, tokens)["params"]

    def draw(path, leaf):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if names[-1] == "scale":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        fan_in = leaf.shape[0] * (leaf.shape[1] if "out" in names else 1)
        std = {"embedding": 1.0, "rel_embedding": 0.5}.get(names[-1], fan_in**-0.5)
        return (rng.standard_normal(leaf.shape) * std).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_of_our_params_loads_strictly_into_hf(layout):
    config = _reference(layout).config
    params = _random_params(config)
    assert isinstance(params["token_embed"]["embedding"], nn.LogicallyPartitioned)
    hf_model = T5ForConditionalGeneration(t5.hf_config_from(config)).eval()
    if not config.tie_embeddings:  # see _reference: a freshly built HF model is always tied
        hf_model.lm_head.weight = torch.nn.Parameter(hf_model.lm_head.weight.detach().clone())
    exported = t5.export_t5(params, config)
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    _assert_parity(_our_forward(params, config), _hf_forward(hf_model), f"[{layout}] ours->HF")


@pytest.mark.parametrize("layout", ["v1_1", "v1_0"])
def test_saved_checkpoint_loads_with_from_pretrained(layout, tmp_path):
    ref = _reference(layout)
    params = t5.import_t5(ref.state, ref.config)
    t5.save_hf_checkpoint(params, ref.config, tmp_path)
    hf_model = T5ForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True).eval()
    assert hf_model.dtype == torch.float32
    np.testing.assert_allclose(_hf_forward(hf_model)[0], ref.logits, atol=1e-6, rtol=0)
    # And back, from the directory alone, without torch.
    config = t5.config_from_hf(tmp_path)
    assert config == ref.config
    _assert_trees_equal(t5.import_t5(tmp_path, config), params)


def test_scanned_import_matches_unscanned():
    ref = _reference("v1_1_deep_decoder")
    scanned_config = dataclasses.replace(ref.config, scan_layers=True)
    scanned = t5.import_t5(ref.state, scanned_config)
    assert scanned["decoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (3, 128, D_MODEL)
    assert scanned["encoder"]["layers"]["self_attention"]["query"]["kernel"].shape[0] == 2
    ours = _our_forward(scanned, scanned_config)
    _assert_parity(ours, (ref.logits, ref.encoded), "[v1_1_deep_decoder, scanned] HF->ours")
    unscanned = _our_forward(t5.import_t5(ref.state, ref.config), ref.config)
    np.testing.assert_allclose(ours[0], unscanned[0], atol=1e-5, rtol=0)
    exported = t5.export_t5(scanned, scanned_config)
    for key, value in ref.state.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 12), (8, 20)])
def test_relative_position_buckets_match_hf(bidirectional, num_buckets, max_distance):
    relative = np.arange(-300, 301)
    theirs = T5Attention._relative_position_bucket(
        torch.from_numpy(relative), bidirectional, num_buckets, max_distance
    ).numpy()
    ours = relative_position_bucket(
        jnp.asarray(relative),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_checkpoint_variants_import_identically(tmp_path):
    """bf16 safetensors, a state dict without `shared.weight` (only the per-stack aliases) and
    the stray cross-attention bias table of old checkpoints."""
    ref = _reference("v1_0")
    expected = t5.import_t5(ref.state, ref.config)

    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in ref.state.items()}
    safetensors.torch.save_file(bf16, tmp_path / "bf16.safetensors")
    from_bf16 = t5.import_t5(tmp_path / "bf16.safetensors", ref.config)
    rounded = {k: v.float().numpy() for k, v in bf16.items()}
    _assert_trees_equal(from_bf16, t5.import_t5(rounded, ref.config))

    aliases_only = dict(ref.state)
    del aliases_only["shared.weight"], aliases_only["lm_head.weight"]
    aliases_only["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = (
        np.zeros((32, 4), np.float32)
    )
    _assert_trees_equal(t5.import_t5(aliases_only, ref.config), expected)


def _import_error(state, config=None) -> str:
    with pytest.raises(ValueError) as info:
        t5.import_t5(state, config or _reference("v1_1").config)
    return str(info.value)


def test_import_errors_name_the_key_and_expected_shape():
    state = _reference("v1_1").state
    q = "encoder.block.1.layer.0.SelfAttention.q.weight"
    message = _import_error({**state, q: state[q][:32]})
    assert f"{q!r}: expected shape (64, 64), got (32, 64)" in message

    wo = "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    message = _import_error({k: v for k, v in state.items() if k != wo})
    assert f"missing {wo!r} (expected shape (64, 128))" in message

    extra = "encoder.block.7.layer.0.layer_norm.weight"
    message = _import_error({**state, extra: np.ones(64, np.float32)})
    assert f"unexpected {extra!r} (shape (64,))" in message

    # A v1.1 checkpoint read with a ReLU-MLP config: the gated MLP does not fit.
    message = _import_error(
        state, dataclasses.replace(_reference("v1_1").config, activation="relu")
    )
    assert "missing 'encoder.block.0.layer.1.DenseReluDense.wi.weight'" in message
    assert "unexpected 'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'" in message


def test_import_rejects_embeddings_our_model_cannot_share():
    state, config = _reference("v1_0").state, _reference("v1_0").config
    different = state["shared.weight"] + 1.0
    message = _import_error({**state, "decoder.embed_tokens.weight": different}, config)
    assert "'decoder.embed_tokens.weight' differs from 'shared.weight'" in message
    message = _import_error({**state, "lm_head.weight": different}, config)
    assert "'lm_head.weight' differs from the shared embedding" in message


@pytest.mark.parametrize(
    "change,match",
    [
        ({"feed_forward_proj": "gated-tanh"}, "feed_forward_proj='gated-tanh' is not supported"),
        ({"feed_forward_proj": "quick_gelu"}, r"only \['gated-gelu', .*'relu', .*\] map"),
        ({"model_type": "bart"}, "model_type 'bart' is not a T5 config"),
        ({"is_encoder_decoder": False}, "Only encoder-decoder"),
    ],
)
def test_config_from_hf_rejects_unsupported_settings(change, match):
    hf = {**_reference("v1_1").hf_model.config.to_dict(), **change}
    with pytest.raises(ValueError, match=match):
        t5.config_from_hf(hf)


@pytest.mark.parametrize(
    "proj, ours", [("gelu", "gelu_exact"), ("gated-silu", "swiglu"), ("gated-relu", "reglu")]
)
def test_other_feed_forward_projs_match_transformers(proj, ours):
    """T5's other MLP variants (the erf GELU, gated SiLU / ReLU): whole-model logits agree."""
    hf_config = T5Config(**dict(SMALL, num_layers=1, feed_forward_proj=proj), dropout_rate=0.0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(hf_config).eval()
    config = t5.config_from_hf(hf_config)
    assert config.activation == ours
    assert t5.hf_config_dict(config)["feed_forward_proj"] == proj
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    params = t5.import_t5(state, config)
    _assert_parity(_our_forward(params, config), _hf_forward(model), f"T5 {proj}")


def test_export_rejects_non_t5_configs_and_mismatched_params():
    ref = _reference("v1_1")
    rope = dataclasses.replace(ref.config, position="rope", num_kv_heads=2)
    with pytest.raises(ValueError, match=r"position='rope' \(T5: 'relative'\).*num_kv_heads=2"):
        t5.export_t5({}, rope)
    with pytest.raises(ValueError, match="not a T5 layout"):
        t5.hf_config_dict(rope)
    # The LLaMA-like families' settings are refused, each named, not silently dropped.
    for field, value in (
        ("qk_norm", True),
        ("qkv_bias", True),
        ("sliding_window", 8),
        ("attn_logit_softcap", 50.0),
        ("post_branch_norm", True),
    ):
        with pytest.raises(ValueError, match=f"{field}={value!r} \\(T5: "):
            t5.hf_config_dict(dataclasses.replace(ref.config, **{field: value}))
    params = t5.import_t5(ref.state, ref.config)
    params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"] = np.zeros((128, 32), np.float32)
    with pytest.raises(
        ValueError, match=r"'decoder/layers_1/mlp/wo/kernel': expected shape \(128, 64\)"
    ):
        t5.export_t5(params, ref.config)


def test_unreadable_sources(tmp_path):
    config = _reference("v1_1").config
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        t5.import_t5(tmp_path, config)
    with pytest.raises(FileNotFoundError):
        t5.import_t5(tmp_path / "absent.safetensors", config)
    with pytest.raises(ValueError, match="Cannot read weights"):
        t5.import_t5(tmp_path / "model.bin", config)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(ValueError, match=r"lacks required keys \['vocab_size', 'd_kv', "):
        t5.config_from_hf(tmp_path)
