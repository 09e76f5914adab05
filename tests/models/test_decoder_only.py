"""Decoder-only model: packing isolation, causality, and every architecture variant running."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer
from t5x_like.training import losses

VARIANTS = [
    dict(position="rope", activation="swiglu", norm="rmsnorm", num_kv_heads=2),
    dict(position="learned", activation="gelu", norm="layernorm", use_bias=True),
    dict(position="sinusoidal", activation="relu", norm="rmsnorm", num_kv_heads=1),
    dict(position="none", activation="geglu", norm="layernorm", tie_embeddings=False),
]


def _model(**kw):
    cfg = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, **kw)
    model = DecoderOnlyTransformer(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v["position"])
def test_packed_row_gives_same_per_token_loss_as_unpacked(variant):
    """Two documents packed in one row score each token exactly as when each is alone."""
    model, params = _model(**variant)
    rng = np.random.default_rng(0)
    doc_a, doc_b = rng.integers(3, 64, 5), rng.integers(3, 64, 7)
    length = 16

    def row(docs):
        tokens = np.zeros(length, np.int32)
        segs = np.zeros(length, np.int32)
        pos = np.zeros(length, np.int32)
        start = 0
        for seg, doc in enumerate(docs, start=1):
            tokens[start : start + len(doc)] = doc
            segs[start : start + len(doc)] = seg
            pos[start : start + len(doc)] = np.arange(len(doc))
            start += len(doc)
        return tokens, segs, pos

    def per_token_loss(tokens, segs, pos):
        inputs = np.where(pos == 0, 0, np.roll(tokens, 1))
        logits = model.apply(
            {"params": params}, inputs[None], segment_ids=segs[None], positions=pos[None]
        )
        return np.asarray(losses.token_cross_entropy(logits, tokens[None])[0][0])

    packed = per_token_loss(*row([doc_a, doc_b]))
    alone_a = per_token_loss(*row([doc_a]))
    alone_b = per_token_loss(*row([doc_b]))
    np.testing.assert_allclose(packed[:5], alone_a[:5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(packed[5:12], alone_b[:7], rtol=1e-5, atol=1e-6)


def test_causal_future_tokens_do_not_change_past_logits():
    model, params = _model()
    tokens = jnp.arange(3, 13)[None]
    changed = tokens.at[0, 7:].set(50)
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, changed)
    np.testing.assert_allclose(a[0, :7], b[0, :7], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[0, 7:], b[0, 7:])


def test_dropout_is_active_only_when_not_deterministic():
    model, params = _model(dropout_rate=0.5)
    tokens = jnp.arange(3, 11)[None]
    eval_a = model.apply({"params": params}, tokens)
    eval_b = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = model.apply(
        {"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}
    )
    assert not np.allclose(train, eval_a)


def test_bfloat16_compute_keeps_float32_params():
    model, params = _model(dtype="bfloat16", param_dtype="float32")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    logits = model.apply({"params": params}, jnp.arange(3, 11)[None])
    assert logits.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(logits, np.float32)).all()


def test_gqa_kv_projection_shapes():
    _, params = _model(num_kv_heads=1)
    attn = params["decoder"]["layers_0"]["self_attention"]
    assert attn["query"]["kernel"].value.shape == (32, 4, 8)
    assert attn["key"]["kernel"].value.shape == (32, 1, 8)
    assert attn["key"]["kernel"].names == ("embed", "kv_heads", "kv")


def _stack_layers(params, num_layers):
    """Unrolled params (decoder/layers_i/...) in the scanned layout (decoder/layers/[L, ...])."""
    params = nn.unbox(params)
    decoder = dict(params["decoder"])
    layers = [decoder.pop(f"layers_{i}") for i in range(num_layers)]
    decoder["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return {**params, "decoder": decoder}


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_and_rematerialised_layers_compute_the_unrolled_model(remat):
    """scan_layers and remat change the program, not the function: same loss and gradients."""
    unrolled, params = _model(num_kv_heads=2)
    scanned, scanned_params = _model(num_kv_heads=2, scan_layers=True, remat=remat)
    kernel = scanned_params["decoder"]["layers"]["self_attention"]["query"]["kernel"]
    assert kernel.value.shape == (2, 32, 4, 8)
    assert kernel.names == ("layers", "embed", "heads", "kv")
    stacked = _stack_layers(params, 2)
    assert jax.tree.structure(stacked) == jax.tree.structure(nn.unbox(scanned_params))

    tokens = jnp.arange(3, 19).reshape(2, 8)

    def loss(model, p):
        logits = model.apply({"params": p}, tokens)
        return losses.token_cross_entropy(logits, tokens)[0].mean()

    loss_a, grads_a = jax.value_and_grad(lambda p: loss(unrolled, p))(nn.unbox(params))
    loss_b, grads_b = jax.value_and_grad(lambda p: loss(scanned, p))(stacked)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        _stack_layers(grads_a, 2),
        grads_b,
    )
