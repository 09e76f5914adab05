"""The model-family adapters: the registry, what each family states, and its hooks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from t5x_like import models
from t5x_like.data import tasks
from t5x_like.errors import ConfigError
from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnly
from t5x_like.models.encoder_decoder import EncoderDecoder

TINY = dict(vocab_size=64, d_model=16, num_layers=1, num_heads=2, mlp_dim=32)
LENGTHS = dict(seq_len=128, inputs_len=12, targets_len=6)


class _Vocab:
    """Pieces are the characters' codes (mod 50, + 3); EOS is 1."""

    eos_id = 1

    def encode_with_sentinels(self, text):
        return [3 + ord(c) % 50 for c in text]


def _cfg(decode_batches=0):
    return config_dict.ConfigDict(
        {"model": {"num_decoder_layers": None}, "train": {"decode_batches": decode_batches}}
    )


def test_registry_names_every_family_and_rejects_unknown_ones():
    assert models.FAMILIES == ("decoder_only", "encoder_decoder", "encoder_only")
    assert isinstance(models.get("decoder_only"), DecoderOnly)
    assert isinstance(models.get("encoder_decoder"), EncoderDecoder)
    with pytest.raises(ConfigError, match=r"model.family='bert'.*\('decoder_only', "):
        models.get("bert")


@pytest.mark.parametrize("name", ["decoder_only", "encoder_decoder"])
def test_family_of_a_built_module_and_its_decoding_twin(name):
    family = models.get(name)
    module = family.module_class(TransformerConfig(**TINY))
    assert models.family_of(module) is family
    assert models.family_of(module.clone(decoding=True)) is family
    with pytest.raises(TypeError, match="not the module of a registered model family"):
        models.family_of(object())


def test_every_task_feeds_exactly_one_family():
    for name in tasks.TASKS:
        task = tasks.Task(name, **LENGTHS)
        families = map(models.get, models.FAMILIES)
        readers = [
            f
            for f in families
            if set(f.features) <= task.features.keys() <= {*f.features, *f.optional_features}
        ]
        assert len(readers) == 1, name
        readers[0].validate(_cfg(), task)  # No error for the family that reads it.


def test_validate_names_the_task_and_the_family_on_a_mismatch():
    causal = tasks.Task("causal_lm", seq_len=8)
    span = tasks.Task("span_corruption", inputs_len=12, targets_len=6)
    with pytest.raises(ConfigError, match=r"makes decoder-only rows but model.family='enc"):
        models.get("encoder_decoder").validate(_cfg(), causal)
    with pytest.raises(ConfigError, match=r"makes encoder-decoder rows but model.family='dec"):
        models.get("decoder_only").validate(_cfg(), span)
    with pytest.raises(ConfigError, match=r"train.decode_batches > 0"):
        models.get("decoder_only").validate(_cfg(decode_batches=1), causal)
    models.get("encoder_decoder").validate(_cfg(decode_batches=1), span)
    bad = _cfg()
    bad.model.num_decoder_layers = 0
    with pytest.raises(ConfigError, match=r"model.num_decoder_layers=0 must be a positive"):
        models.get("encoder_decoder").validate(bad, span)
    with pytest.raises(ConfigError, match=r"decode_batches=2: decoded-text metrics need"):
        models.get("decoder_only").check_decode_batches(2)
    models.get("encoder_decoder").check_decode_batches(2)


def test_row_lengths_and_tokens_per_row():
    decoder_only, encoder_decoder = models.get("decoder_only"), models.get("encoder_decoder")
    causal = tasks.Task("causal_lm", seq_len=8)
    seq2seq = tasks.Task("seq2seq", inputs_len=12, targets_len=6)
    assert decoder_only.row_lengths(causal) == {"decoder": 8}
    assert decoder_only.tokens_per_row(causal) == 8
    assert list(encoder_decoder.row_lengths(seq2seq).items()) == [("encoder", 12), ("decoder", 6)]
    assert encoder_decoder.tokens_per_row(seq2seq) == 18


@pytest.mark.parametrize("name", ["decoder_only", "encoder_decoder"])
def test_apply_runs_the_module_on_a_pipeline_batch(name):
    family = models.get(name)
    module = family.build(config_dict.ConfigDict({"family": name, **TINY}))
    assert isinstance(module, family.module_class)
    params = nn.unbox(family.init_params(module, jax.random.PRNGKey(0), 2))
    task = tasks.Task("causal_lm" if name == "decoder_only" else "seq2seq", **LENGTHS)
    batch = {k: jnp.ones((2, n), jnp.int32) for k, n in task.features.items()}
    logits = family.apply(module, params, batch)
    hidden = family.apply(module, params, batch, return_hidden=True)
    length = batch["targets"].shape[1]
    assert logits.shape == (2, length, TINY["vocab_size"])
    assert hidden.shape == (2, length, TINY["d_model"])
    head = family.lm_head(module, params)
    assert head.vocab_major  # TransformerConfig ties the embeddings by default.
    np.testing.assert_allclose(hidden @ head.weight.T, logits, rtol=1e-5, atol=1e-5)


def test_prompt_batches_of_each_family():
    vocab = _Vocab()
    causal = tasks.Task("causal_lm", seq_len=8)
    out = models.get("decoder_only").prompt_batch(vocab, ["ab"], 2, 4, causal, start_id=0)
    a, b = vocab.encode_with_sentinels("ab")
    np.testing.assert_array_equal(out["tokens"], [[0, 0, a, b], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[0, 1, 1, 1], [0, 0, 0, 1]])

    seq2seq = tasks.Task("seq2seq", inputs_len=4, targets_len=4, inputs_prefix="x")
    out = models.get("encoder_decoder").prompt_batch(vocab, ["abcd"], 2, 99, seq2seq, 0)
    x = vocab.encode_with_sentinels("x")[0]
    np.testing.assert_array_equal(out["encoder_inputs"], [[x, a, b, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["encoder_segment_ids"], [[1, 1, 1, 1], [0, 0, 0, 0]])


def test_prompt_fits_the_learned_position_table_of_a_decoder_only_model():
    learned = TransformerConfig(**TINY, position="learned", max_len=16)
    models.get("decoder_only").check_prompt_fits(8, 8, learned)
    with pytest.raises(ValueError, match="exceeds the learned position table"):
        models.get("decoder_only").check_prompt_fits(8, 9, learned)
    models.get("encoder_decoder").check_prompt_fits(8, 9, learned)  # The encoder cuts it.


def test_hf_model_types_are_data_and_disjoint():
    types = [models.get(name).hf_model_types for name in models.FAMILIES]
    decoder_only = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
    assert types == [decoder_only, ("t5",), ("bert", "roberta")]
