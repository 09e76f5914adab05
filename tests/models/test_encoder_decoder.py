"""Encoder-decoder (T5) model: relative position buckets, packing isolation, causality,
padding and architecture variants (decoding is tested in tests/test_decoding.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import relative_position_bucket
from t5x_like.models.encoder_decoder import EncoderDecoderTransformer
from t5x_like.training import losses

T5_V1_1 = dict(
    position="relative",
    activation="geglu",
    tie_embeddings=False,
    scale_attention_logits=False,
)
VARIANTS = {
    "t5_v1_1": T5_V1_1,
    "t5_v1_0": dict(T5_V1_1, activation="relu", tie_embeddings=True),
    "vanilla_post_norm": dict(
        position="sinusoidal", norm="layernorm", norm_position="post", activation="relu"
    ),
    "learned_gqa_3_decoder_layers": dict(position="learned", num_kv_heads=2, num_decoder_layers=3),
}


def _model(**kw):
    cfg = TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, **kw)
    model = EncoderDecoderTransformer(cfg)
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), tokens, tokens)["params"]
    return model, params


def test_relative_position_buckets_match_t5():
    rel = jnp.array([0, -1, 1, 3, -7, -8, -20, 20, -200, 200])
    bidirectional = relative_position_bucket(
        rel, bidirectional=True, num_buckets=32, max_distance=128
    )
    # 16 buckets per direction, 8 exact; keys after the query use the upper 16.
    np.testing.assert_array_equal(bidirectional, [0, 1, 17, 19, 7, 8, 10, 26, 15, 31])
    causal = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    # 16 exact past distances; the future is bucket 0 (it is masked anyway).
    np.testing.assert_array_equal(causal, [0, 1, 0, 0, 7, 8, 17, 0, 31, 0])


def _row(examples, length):
    tokens = np.zeros(length, np.int32)
    segs = np.zeros(length, np.int32)
    pos = np.zeros(length, np.int32)
    start = 0
    for seg, ex in enumerate(examples, start=1):
        tokens[start : start + len(ex)] = ex
        segs[start : start + len(ex)] = seg
        pos[start : start + len(ex)] = np.arange(len(ex))
        start += len(ex)
    return tokens, segs, pos


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_packed_row_gives_same_per_token_loss_as_unpacked(variant):
    """Two (inputs, targets) examples packed in one row score as each does alone."""
    model, params = _model(**variant)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(3, 64, 6), rng.integers(3, 64, 9)]
    targets = [rng.integers(3, 64, 4), rng.integers(3, 64, 5)]

    def per_token_loss(which):
        enc, enc_seg, enc_pos = _row([inputs[i] for i in which], 20)
        tgt, dec_seg, dec_pos = _row([targets[i] for i in which], 12)
        dec_in = np.where(dec_pos == 0, 0, np.roll(tgt, 1))
        logits = model.apply(
            {"params": params},
            enc[None],
            dec_in[None],
            encoder_segment_ids=enc_seg[None],
            decoder_segment_ids=dec_seg[None],
            encoder_positions=enc_pos[None],
            decoder_positions=dec_pos[None],
        )
        return np.asarray(losses.token_cross_entropy(logits, tgt[None])[0][0])

    packed = per_token_loss([0, 1])
    np.testing.assert_allclose(packed[:4], per_token_loss([0])[:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(packed[4:9], per_token_loss([1])[:5], rtol=1e-5, atol=1e-6)


def test_decoder_is_causal_and_encoder_padding_is_ignored():
    model, params = _model(**T5_V1_1)
    rng = np.random.default_rng(1)
    enc = rng.integers(3, 64, (1, 10))
    dec = rng.integers(3, 64, (1, 8))
    seg = np.ones_like(enc)
    logits = model.apply({"params": params}, enc, dec, encoder_segment_ids=seg)
    changed_future = dec.copy()
    changed_future[0, 5:] = 7
    logits_future = model.apply({"params": params}, enc, changed_future, encoder_segment_ids=seg)
    np.testing.assert_allclose(logits_future[0, :5], logits[0, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits_future[0, 5:], logits[0, 5:])
    # Extra padded encoder positions (segment 0) change nothing.
    padded = np.concatenate([enc, rng.integers(3, 64, (1, 4))], axis=1)
    padded_seg = np.concatenate([seg, np.zeros((1, 4), np.int32)], axis=1)
    logits_padded = model.apply({"params": params}, padded, dec, encoder_segment_ids=padded_seg)
    # Other shapes, other float32 summation orders: ~1e-6 of the logits' scale apart (a leak
    # through the padding moves them by O(scale)).
    scale = float(np.abs(logits).max())
    np.testing.assert_allclose(logits_padded, logits, rtol=1e-5, atol=1e-6 * scale)


def test_t5_unscaled_attention_folds_the_scale_into_the_query_init():
    """With unscaled logits the query kernel's std is 1/sqrt(head_dim) smaller (as in T5X)."""
    _, params = _model(**T5_V1_1)
    attention = params["encoder"]["layers_0"]["self_attention"]
    query = np.asarray(attention["query"]["kernel"].value)
    key = np.asarray(attention["key"]["kernel"].value)
    np.testing.assert_allclose(query.std() * np.sqrt(8), key.std(), rtol=0.2)
    assert "relpos_bias" in params["encoder"] and "relpos_bias" in params["decoder"]
    assert "logits" in params  # v1.1: untied LM head.
