"""Remat policies: same loss and gradients as no remat; the compiled program really recomputes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import layout
from t5x_like.layers.config import REMAT_POLICIES, TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer


def _loss_fn(model):
    def loss(params, tokens, rng):
        logits = model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": rng})
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return loss


def _model(remat, **kw):
    return DecoderOnlyTransformer(TransformerConfig(remat=remat, **kw))


_SMALL = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64)


@pytest.fixture(scope="module")
def reference():
    """Params, inputs and the no-remat loss and grads (with dropout: masks must be redrawn
    identically when a layer is recomputed)."""
    model = _model("none", dropout_rate=0.1, **_SMALL)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    params = nn.unbox(model.init(jax.random.key(0), tokens)["params"])
    rng = jax.random.key(2)
    loss, grads = jax.jit(jax.value_and_grad(_loss_fn(model)))(params, tokens, rng)
    return params, tokens, rng, loss, grads


@pytest.mark.parametrize("remat", [p for p in REMAT_POLICIES if p != "none"])
def test_policy_gives_the_same_loss_and_grads(remat, reference):
    params, tokens, rng, ref_loss, ref_grads = reference
    model = _model(remat, dropout_rate=0.1, **_SMALL)
    loss, grads = jax.jit(jax.value_and_grad(_loss_fn(model)))(params, tokens, rng)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ref_grads), jax.tree.leaves(grads), strict=True
    ):
        scale = float(jnp.abs(a).max())
        np.testing.assert_allclose(
            b, a, rtol=1e-6, atol=1e-6 * scale, err_msg=jax.tree_util.keystr(path)
        )


@pytest.mark.parametrize("remat", ["save_qkv_proj", "dots_saveable"])
def test_policy_inside_scanned_layers_gives_the_same_loss_and_grads(remat, reference):
    """nn.remat inside nn.scan: params and grads in the scanned layout (t5x_like/layout.py)."""
    params, tokens, rng, ref_loss, ref_grads = reference
    model = _model(remat, dropout_rate=0.0, scan_layers=True, **_SMALL)
    no_dropout = _model("none", dropout_rate=0.0, **_SMALL)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(_loss_fn(no_dropout)))(params, tokens, rng)
    scanned = layout.convert_params(jax.device_get(params), scan_layers=True)
    loss, grads = jax.jit(jax.value_and_grad(_loss_fn(model)))(scanned, tokens, rng)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    grads = layout.convert_params(jax.device_get(grads), scan_layers=False)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max()),
        jax.device_get(ref_grads),
        grads,
    )


def _compiled_grad(remat):
    """The compiled gradient of a 12-layer narrow model (activations dominate its memory)."""
    model = _model(remat, vocab_size=64, d_model=32, num_layers=12, num_heads=4, mlp_dim=128)
    tokens = jax.ShapeDtypeStruct((8, 64), jnp.int32)
    params = jax.eval_shape(
        lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    )
    rng = jax.random.key(0)
    return jax.jit(jax.grad(_loss_fn(model))).lower(params, tokens, rng).compile()


def test_full_remat_recomputes_and_saves_memory():
    none, full = _compiled_grad("none"), _compiled_grad("full")
    dots = lambda compiled: compiled.as_text().count(" dot(")
    # The backward pass recomputes each layer's forward matmuls.
    assert dots(full) > dots(none)
    assert full.memory_analysis().temp_size_in_bytes < none.memory_analysis().temp_size_in_bytes
