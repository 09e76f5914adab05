"""The family registry (t5x_like.interop.registry): a checkpoint's config.json picks its converter,
which round-trips it exactly; the family modules' public names are the generic `Family` path.

Parity of each family with transformers is in the test_<family>_parity modules.
"""

import numpy as np
import pytest
from flax import traverse_util
from interop import decoder_parity as parity

from t5x_like.interop import (
    bert,
    common,
    gemma,
    gemma2,
    gemma3,
    gpt2,
    llama,
    mistral,
    qwen2,
    qwen3,
    registry,
    t5,
)

SMALL_HF_CONFIGS = {
    "t5": dict(
        model_type="t5", vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4
    ),
    "mt5": dict(
        model_type="mt5",
        vocab_size=96,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    "gpt2": dict(model_type="gpt2", vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=16),
    "llama": dict(
        model_type="llama",
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    # Alternating local / global layers: scanned, the same params round-trip.
    "gemma2": dict(
        model_type="gemma2",
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        head_dim=16,
        sliding_window=4,
    ),
    "gemma3_text": dict(
        model_type="gemma3_text",
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        head_dim=16,
        sliding_window=4,
        sliding_window_pattern=3,
    ),
}
EXPECTED_FAMILY = {
    "t5": t5.T5,
    "mt5": t5.T5,
    "gpt2": gpt2.GPT2,
    "llama": llama.LLAMA,
    "mistral": mistral.MISTRAL,
    "qwen2": qwen2.QWEN2,
    "qwen3": qwen3.QWEN3,
    "gemma": gemma.GEMMA,
    "gemma2": gemma2.GEMMA2,
    "gemma3_text": gemma3.GEMMA3,
    "bert": bert.BERT,
    "roberta": bert.ROBERTA,
}


def test_model_types_name_one_family_each():
    model_types = [t for family in registry.FAMILIES.values() for t in family.model_types]
    assert len(model_types) == len(set(model_types))
    assert set(model_types) == set(EXPECTED_FAMILY)


@pytest.mark.parametrize("module, family", [(t5, t5.T5), (gpt2, gpt2.GPT2), (llama, llama.LLAMA)])
def test_public_names_are_the_family_methods(module, family):
    name = module.__name__.rsplit(".", 1)[-1]
    assert getattr(module, f"import_{name}") == family.import_weights
    assert getattr(module, f"export_{name}") == family.export_weights
    for method in ("config_from_hf", "hf_config_dict", "hf_config_from", "save_hf_checkpoint"):
        assert getattr(module, method) == getattr(family, method)


@pytest.mark.parametrize("model_type", sorted(SMALL_HF_CONFIGS))
@pytest.mark.parametrize("scan_layers", [False, True])
def test_saved_checkpoint_picks_its_family_and_round_trips(model_type, scan_layers, tmp_path):
    hf = SMALL_HF_CONFIGS[model_type]
    family = registry.family_for(hf)
    assert family is EXPECTED_FAMILY[model_type]
    config = family.config_from_hf(hf, scan_layers=scan_layers)
    target = family.target
    shapes = common.param_shapes(target.module(config), *common.int_inputs(*target.init_shapes))
    rng = np.random.default_rng(0)
    params = traverse_util.unflatten_dict(
        # Multiples of 1/64: exact through Gemma's norm offset too (HF stores scale - 1).
        {
            path: (np.round(rng.standard_normal(shape) * 64) / 64).astype(np.float32)
            for path, shape in shapes.items()
        }
    )
    family.save_hf_checkpoint(params, config, tmp_path)

    found = registry.family_for(tmp_path)
    assert found is family
    assert found.config_from_hf(tmp_path, scan_layers=scan_layers) == config
    parity.assert_trees_equal(found.import_weights(tmp_path, config), params)


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(ValueError, match=r"model_type 'bart' has no converter; supported: \["):
        registry.family_for({"model_type": "bart"})
    with pytest.raises(ValueError, match="model_type None has no converter"):
        registry.family_for({"vocab_size": 8})
