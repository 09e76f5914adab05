"""Parity of t5x_like.interop.bert with Hugging Face BERT / RoBERTa: every head's float32
outputs on a padded sentence-pair batch within 1e-5 of transformers, after import and after
export (strict load_state_dict and save/from_pretrained), and clear errors for what does not fit.

HF models are built from small random configs (nothing is downloaded) in eval mode, with weights
at 5x BERT's init scale and every LayerNorm scale and bias randomised, so that a swapped or
mis-transposed weight cannot hide behind an initial value.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from t5x_like.interop import bert, registry
from t5x_like.models.encoder_only import EncoderOnlyTransformer

TOLERANCE = 1e-5
VOCAB, LENGTH = 96, 12
SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=24,
    initializer_range=0.1,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    num_labels=3,
)
# Architecture -> (config class, its fields, HF output name -> ours).
CASES = {
    "BertForMaskedLM": ("BertConfig", {}, {"logits": "mlm_logits"}),
    "BertForPreTraining": (
        "BertConfig",
        {},
        {"prediction_logits": "mlm_logits", "seq_relationship_logits": "nsp_logits"},
    ),
    "BertForSequenceClassification": ("BertConfig", {}, {"logits": "logits"}),
    "BertForTokenClassification": ("BertConfig", {}, {"logits": "logits"}),
    "BertForQuestionAnswering": (
        "BertConfig",
        dict(num_labels=2),  # HF's qa_outputs has num_labels (= start, end) outputs.
        {"start_logits": "start_logits", "end_logits": "end_logits"},
    ),
    "RobertaForMaskedLM": (
        "RobertaConfig",
        # RoBERTa: positions from padding_idx + 1 = 2 and one token type.
        dict(max_position_embeddings=LENGTH + 2, type_vocab_size=1, pad_token_id=1),
        {"logits": "mlm_logits"},
    ),
}


def _hf_model(architecture):
    config_class, fields, _ = CASES[architecture]
    config = getattr(transformers, config_class)(**{**SMALL, **fields})
    torch.manual_seed(0)
    config.architectures = [architecture]  # As a saved checkpoint's config.json has it.
    model = getattr(transformers, architecture)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def _batch(architecture):
    """Three rows: a full sentence pair, and two right-padded ones (pad id 0; RoBERTa 1)."""
    rng = np.random.default_rng(1)
    pad = 1 if architecture.startswith("Roberta") else 0
    tokens = rng.integers(2, VOCAB, (3, LENGTH))
    mask = np.ones((3, LENGTH), np.int64)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    tokens = np.where(mask > 0, tokens, pad)
    types = np.zeros((3, LENGTH), np.int64)
    if not architecture.startswith("Roberta"):
        types[:, 6:] = 1
        types *= mask
    return tokens, types, mask


def _hf_outputs(model, tokens, types, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens),
            token_type_ids=torch.tensor(types),
            attention_mask=torch.tensor(mask),
        )
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def _our_outputs(architecture, family, config, params, tokens, types, mask):
    hf_config = {"architectures": [architecture], "model_type": family.model_types[0]}
    hf_config.update(family.hf_config_dict(config))
    module = EncoderOnlyTransformer(config, **bert.module_args(hf_config))
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    out = jax.jit(module.apply)(
        {"params": params},
        jnp.asarray(tokens, jnp.int32),
        token_type_ids=jnp.asarray(types, jnp.int32),
        segment_ids=jnp.asarray(mask, jnp.int32),
        positions=jnp.asarray(positions, jnp.int32),
    )
    return jax.device_get(out)


def _assert_close(architecture, hf_out, ours, mask):
    for hf_name, our_name in CASES[architecture][2].items():
        a, b = hf_out[hf_name], ours[our_name]
        assert a.shape == b.shape, (hf_name, a.shape, b.shape)
        if a.ndim >= 2 and a.shape[1] == LENGTH:  # Per token: compare real tokens only.
            real = mask > 0
            a, b = a[real], b[real]
        np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=0, err_msg=hf_name)


@pytest.mark.parametrize("architecture", sorted(CASES))
def test_import_and_export_agree_with_transformers(architecture, tmp_path):
    model = _hf_model(architecture)
    family = bert.family_for_hf(model.config)
    assert family.architecture == architecture
    config = family.config_from_hf(model.config)
    params = family.import_weights(model.state_dict(), config)
    batch = _batch(architecture)
    hf_out = _hf_outputs(model, *batch)
    _assert_close(
        architecture, hf_out, _our_outputs(architecture, family, config, params, *batch), batch[2]
    )

    # Export: a strict load into a fresh model of the architecture gives the same outputs.
    fresh = getattr(transformers, architecture)(family.hf_config_from(config)).eval()
    state = {k: torch.from_numpy(v) for k, v in family.export_weights(params, config).items()}
    fresh.load_state_dict(state, strict=True)
    _assert_close(
        architecture,
        _hf_outputs(fresh, *batch),
        _our_outputs(architecture, family, config, params, *batch),
        batch[2],
    )
    # And a saved checkpoint loads with from_pretrained and is found by the registry.
    family.save_hf_checkpoint(params, config, tmp_path)
    loaded = getattr(transformers, architecture).from_pretrained(tmp_path).eval()
    loaded_out = _hf_outputs(loaded, *batch)
    as_ours = {ours: loaded_out[name] for name, ours in CASES[architecture][2].items()}
    _assert_close(architecture, hf_out, as_ours, batch[2])
    assert bert.family_for_hf(tmp_path) is family
    assert registry.family_for(tmp_path).model_types == family.model_types


def test_scanned_import_gives_the_same_outputs():
    model = _hf_model("BertForPreTraining")
    family = bert.family_for_hf(model.config)
    config = family.config_from_hf(model.config, scan_layers=True)
    params = family.import_weights(model.state_dict(), config)
    assert params["encoder"]["layers"]["self_attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
    batch = _batch("BertForPreTraining")
    ours = _our_outputs("BertForPreTraining", family, config, params, *batch)
    _assert_close("BertForPreTraining", _hf_outputs(model, *batch), ours, batch[2])


def test_what_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match=r"hidden_act='silu' is not supported"):
        bert.BERT.config_from_hf({**SMALL, "model_type": "bert", "hidden_act": "silu"})
    with pytest.raises(ValueError, match=r"position_embedding_type='relative_key'"):
        bert.BERT.config_from_hf(
            {**SMALL, "model_type": "bert", "position_embedding_type": "relative_key"}
        )
    with pytest.raises(ValueError, match=r"architecture 'BertForNextSentencePrediction' is not"):
        bert.family("BertForNextSentencePrediction")
    model = _hf_model("BertForMaskedLM")
    state = dict(model.state_dict())
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    config = bert.BERT.config_from_hf(model.config)
    with pytest.raises(ValueError, match=r"'cls.predictions.decoder.weight' differs from"):
        bert.BERT.import_weights(state, config)
