"""A damaged Hugging Face checkpoint fails its import with one ValueError naming the file:
a truncated or garbage `model.safetensors` (float32 and bfloat16 ones, which take different
readers), an empty or garbage `config.json` or sharded index."""

import json
import re

import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import save_file

from t5x_like.interop import common, gpt2, registry

HF = dict(model_type="gpt2", vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=16)


@pytest.fixture
def checkpoint(tmp_path):
    """A complete GPT-2 checkpoint directory (config.json, model.safetensors) and its config."""
    config = gpt2.GPT2.config_from_hf(HF)
    target = gpt2.GPT2.target
    shapes = common.param_shapes(target.module(config), *common.int_inputs(*target.init_shapes))
    rng = np.random.default_rng(0)
    params = traverse_util.unflatten_dict(
        {path: rng.standard_normal(shape).astype(np.float32) for path, shape in shapes.items()}
    )
    gpt2.GPT2.save_hf_checkpoint(params, config, tmp_path)
    gpt2.GPT2.import_weights(tmp_path, config)  # Intact, it imports.
    return tmp_path, config


def _unreadable(path, what: str) -> str:
    return (
        rf"{re.escape(str(path))}: not a readable {what} \(.+\); the file is truncated or damaged"
    )


def test_truncated_safetensors(checkpoint):
    directory, config = checkpoint
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=_unreadable(weights, r"\.safetensors file")):
        gpt2.GPT2.import_weights(directory, config)


def test_garbage_safetensors(checkpoint):
    directory, config = checkpoint
    weights = directory / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(ValueError, match=_unreadable(weights, r"\.safetensors file")):
        gpt2.GPT2.import_weights(directory, config)


def test_truncated_bfloat16_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.bfloat16).reshape(8, 8)}, str(path))
    whole = common.read_safetensors(path)["w"]  # The bfloat16 reader, intact.
    assert np.array_equal(whole.astype(np.float32), np.arange(64).reshape(8, 8))
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ValueError, match=_unreadable(path, r"\.safetensors file")):
        common.read_safetensors(path)


@pytest.mark.parametrize("content", [b"", b'{"model_type": "gpt2", ', b"\xff\xfe\x00garbage"])
def test_damaged_config_json(checkpoint, content):
    directory, _ = checkpoint
    (directory / "config.json").write_bytes(content)
    pattern = _unreadable(directory / "config.json", "JSON file")
    with pytest.raises(ValueError, match=pattern):
        registry.family_for(directory)
    with pytest.raises(ValueError, match=pattern):
        gpt2.GPT2.config_from_hf(directory)


def test_config_json_that_is_not_an_object(checkpoint):
    directory, _ = checkpoint
    (directory / "config.json").write_text(json.dumps([HF]))
    with pytest.raises(ValueError, match=r"config.json: not a readable JSON file \(a list, not"):
        registry.family_for(directory)


def test_garbage_sharded_index(checkpoint):
    directory, config = checkpoint
    index = directory / "model.safetensors.index.json"
    index.write_text('{"weight_map": ')
    with pytest.raises(ValueError, match=_unreadable(index, "JSON file")):
        gpt2.GPT2.import_weights(directory, config)
