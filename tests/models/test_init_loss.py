"""A fresh decoder-only model starts at validation loss ln V at every depth (issue 21).

The default decoder (configs/decoder_only.py: 256 wide, 4 heads, SwiGLU 768; N(0, 0.3^2) tied
embeddings with logits scaled by d_model**-0.5, residual projections / sqrt(2 L)) at 1, 2, 4 and
8 layers, and untied, evaluated on real validation batches of the embedded corpus through the
trainer's own path (build, init, jitted eval step); and T5's init left as published. Before
this scheme (N(0, 1) embeddings) the same model started at 13.16, 11.41, 9.54 and 8.42 for
ln 2048 = 7.62.
"""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest
from testutil import load_config, tiny_config

from t5x_like import models, partitioning
from t5x_like.experiment import assembly as experiment
from t5x_like.models.decoder_only import DecoderOnlyTransformer


def _initial_eval_loss(cfg) -> tuple[float, int]:
    exp = experiment.build_experiment(cfg, splits_needed=(cfg.data.eval_split,))
    abstract, shardings = experiment.state_shardings(exp)
    state = experiment.init_state(exp, shardings)
    _, eval_step = experiment.jit_steps(exp, shardings)
    with partitioning.activate(exp.mesh, exp.rules):
        metrics = experiment.evaluate(exp, eval_step, state.params)
    return metrics["loss"], exp.model_config.vocab_size


@pytest.mark.parametrize("layers, tied", [(1, True), (2, True), (4, True), (8, True), (2, False)])
def test_default_decoder_starts_at_ln_vocab(corpus_dir, layers, tied):
    cfg = load_config()  # The default decoder, as the README trains it, on the test corpus.
    cfg.data.data_dir = corpus_dir
    cfg.data.vocab_size = 256  # The corpus fixture's cached vocabulary.
    cfg.model.update(num_layers=layers, tie_embeddings=tied)
    cfg.train.update(batch_size=8, eval_batches=2, compilation_cache_dir="")
    loss, vocab_size = _initial_eval_loss(cfg)
    assert abs(loss - math.log(vocab_size)) < 0.15, (layers, loss, math.log(vocab_size))


def test_init_scheme_is_the_configured_one():
    """The token embedding's std is model.embed_init_std; the residual output projections are
    1/sqrt(2 L) of the other kernels' fan-in std; 1.0 / False give the layers' own init."""
    cfg = tiny_config(**{"model.d_model": 64, "model.vocab_size": 4096, "model.num_layers": 8})
    family = models.get("decoder_only")
    module = family.build(cfg.model)
    assert (module.embed_init_std, module.scale_residual_init) == (0.3, True)
    params = jax.tree.map(np.asarray, nn.unbox(family.init_params(module, _rng(), 1)))
    np.testing.assert_allclose(params["token_embed"]["embedding"].std(), 0.3, rtol=0.02)
    layer = params["decoder"]["layers_3"]
    wi, wo = layer["mlp"]["wi_0"]["kernel"], layer["mlp"]["wo"]["kernel"]
    # Truncated-normal fan-in init: std ~0.88 / sqrt(fan_in); wo additionally / sqrt(16).
    ratio = (wo.std() * np.sqrt(wo.shape[0])) / (wi.std() * np.sqrt(wi.shape[0]))
    np.testing.assert_allclose(ratio, 1 / np.sqrt(16), rtol=0.05)

    cfg.model.update(embed_init_std=1.0, scale_residual_init=False)
    plain = family.build(cfg.model)
    rescaled = nn.unbox(family.init_params(plain, _rng(), 1))
    reference = DecoderOnlyTransformer(plain.config).init(_rng(), *family.dummy_inputs(1))
    for a, b in zip(jax.tree.leaves(rescaled), jax.tree.leaves(reference["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(nn.unbox(b)))


def test_t5_keeps_its_published_init():
    """The decoder-only init fields do not touch the encoder-decoder family: its params are
    exactly its module's own init."""
    cfg = load_config("t5")
    assert cfg.model.embed_init_std == 0.3  # Present in every config, read by decoder_only.
    family = models.get("encoder_decoder")
    cfg.model.update(vocab_size=128, d_model=32, num_layers=1, num_heads=2, head_dim=16)
    module = family.build(cfg.model)
    params = family.init_params(module, _rng(), 1)
    reference = module.init(_rng(), *family.dummy_inputs(1))["params"]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    embedding = np.asarray(nn.unbox(params)["token_embed"]["embedding"])
    np.testing.assert_allclose(embedding.std(), 1.0, rtol=0.05)


def _rng() -> jax.Array:
    return jax.random.PRNGKey(0)
