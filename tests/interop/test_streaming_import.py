"""Streaming import (t5x_like/interop/streaming.py): a checkpoint split into safetensors shards
(model.safetensors.index.json; bfloat16 and float32 shards) streamed onto an 8-device mesh that
shards params over fsdp and tensor equals the in-memory import exactly, scanned and unrolled,
for LLaMA (GQA), GPT-2 (fused Q/K/V), Gemma (norm scales stored as w - 1) and T5 v1.1 (two
stacks, an untied head); each device's shard is read as exactly its own box of the HF tensor;
a missing or truncated shard is one line naming the file."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from t5x_like import partitioning
from t5x_like.interop import common, streaming
from t5x_like.interop.gemma import GEMMA
from t5x_like.interop.gpt2 import GPT2
from t5x_like.interop.llama import LLAMA
from t5x_like.interop.t5 import T5

SMALL = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
)
CASES = {
    "llama": (LLAMA, dict(SMALL, model_type="llama", tie_word_embeddings=False)),
    "gpt2": (
        GPT2,
        dict(model_type="gpt2", vocab_size=96, n_embd=32, n_layer=3, n_head=4, n_positions=16),
    ),
    "gemma": (GEMMA, dict(SMALL, model_type="gemma", head_dim=16)),
    "t5": (
        T5,
        dict(
            model_type="t5",
            vocab_size=96,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=3,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        ),
    ),
}


def _write_sharded(family, config, directory, num_shards=3):
    """A random checkpoint of `family` (unrolled `config`) as `num_shards` shards, the first
    in bfloat16 (as most real checkpoints), the others in float32."""
    target = family.target
    shapes = common.param_shapes(target.module(config), *common.int_inputs(*target.init_shapes))
    rng = np.random.default_rng(0)
    params = traverse_util.unflatten_dict(
        {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
    )
    state = family.export_weights(params, config)
    read_once = {r.hf_key for r in family.weight_rules(config, False)}
    keys = [k for k in state if k in read_once]
    weight_map = {}
    for i in range(num_shards):
        name = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::num_shards]}
        if i == 0:
            part = {k: v.astype(ml_dtypes.bfloat16) for k, v in part.items()}
        common.save_safetensors(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


def _targets(family, config, dtype=np.float32):
    """Abstract params on a (data 1, fsdp 4, tensor 2) mesh with the fsdp_tp rules."""
    mesh = partitioning.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    target = family.target
    boxed = jax.eval_shape(
        target.module(config).init,
        jax.random.key(0),
        *common.int_inputs(*target.init_shapes),
    )["params"]
    shardings = partitioning.params_shardings(boxed, mesh, partitioning.PRESETS["fsdp_tp"])
    abstract = common.flatten_params(boxed)
    flat_shardings = traverse_util.flatten_dict(shardings)
    return traverse_util.unflatten_dict(
        {
            p: jax.ShapeDtypeStruct(x.shape, dtype, sharding=flat_shardings[p])
            for p, x in abstract.items()
        }
    )


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    family, hf = CASES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    _write_sharded(family, family.config_from_hf(hf), directory)
    return family, hf, directory


def _is_view(rule) -> bool:
    """Whether `rule.to_ours` only re-indexes its tensor (so a box of it can be read)."""
    x = np.zeros(rule.hf_shape, np.float32)
    out = rule.to_ours(x)
    return all(np.shares_memory(p, x) for p in (out if isinstance(out, list) else [out]))


def _expected_bytes(targets, state, sources, scanned):
    """What reading exactly each device's shard costs: the bytes of every distinct device box
    of every param, in its HF tensor's dtype (per layer: shards hold different dtypes); a
    param that is no view of its tensor (Gemma's norms, stored as w - 1) reads it whole, once."""
    total = 0
    for path, target in common.flatten_params(targets).items():
        boxes = {
            tuple(s.indices(n)[:2] for s, n in zip(index, target.shape, strict=True))
            for index in target.sharding.addressable_devices_indices_map(target.shape).values()
        }
        rules = sources[path]
        for layer, rule in enumerate(rules):
            tensor = state[rule.hf_key]
            itemsize = np.dtype(common._SAFETENSORS_DTYPES[tensor.dtype]).itemsize
            if not _is_view(rule):
                total += int(np.prod(tensor.shape)) * itemsize
                continue
            for box in boxes:
                if path in scanned:  # The layer axis first: this layer's part of the box.
                    (start, stop), box = box[0], box[1:]
                    if not start <= layer < stop:
                        continue
                total += int(np.prod([b - a for a, b in box])) * itemsize
    return total


@pytest.mark.parametrize("scan_layers", [False, True])
def test_streamed_equals_in_memory(checkpoint, scan_layers):
    family, hf, directory = checkpoint
    config = family.config_from_hf(hf, scan_layers=scan_layers)
    targets = _targets(family, config)
    stats = streaming.ReadStats()
    streamed = streaming.stream_params(family, directory, config, targets, stats=stats)
    in_memory = common.flatten_params(family.import_weights(directory, config))
    flat = common.flatten_params(streamed)
    assert flat.keys() == in_memory.keys()
    sharded = 0
    for path, target in common.flatten_params(targets).items():
        assert flat[path].sharding == target.sharding
        assert flat[path].dtype == np.float32
        np.testing.assert_array_equal(np.asarray(flat[path]), in_memory[path], err_msg=str(path))
        sharded += not target.sharding.is_fully_replicated
    assert sharded >= 5  # The mesh really splits the params.

    # Each device's shard came from its own box of the HF tensor: the bytes read are exactly
    # those of the distinct device shards (replicas share a read; no tensor read whole).
    state = streaming.lazy_state_dict(directory)
    rules = family.weight_rules(config, False)
    sources, scanned = {}, set()  # Our param -> its rule (one per layer when scanned).
    for rule in rules:
        for path in rule.paths if isinstance(rule, common.FusedRule) else (rule.path,):
            if scan_layers and path[1].startswith("layers_"):
                path = (path[0], "layers", *path[2:])
                scanned.add(path)
            sources.setdefault(path, []).append(rule)
    assert stats.bytes_read == _expected_bytes(targets, state, sources, scanned)
    whole = {k: tuple((0, n) for n in t.shape) for k, t in state.items()}
    partial = [key for key, box in stats.reads if box != whole[key]]
    assert len(partial) > len(stats.reads) // 2


def test_bfloat16_targets_round_as_in_memory(checkpoint):
    """Params of another dtype: float32 first, then the target dtype, as convert_from_hf casts
    the in-memory import."""
    family, hf, directory = checkpoint
    config = family.config_from_hf(hf)
    targets = _targets(family, config, dtype=jax.numpy.bfloat16)
    streamed = common.flatten_params(streaming.stream_params(family, directory, config, targets))
    in_memory = common.flatten_params(family.import_weights(directory, config))
    for path, value in in_memory.items():
        expected = value.astype(jax.numpy.bfloat16)
        assert streamed[path].dtype == expected.dtype
        np.testing.assert_array_equal(np.asarray(streamed[path]), expected)


def test_missing_or_truncated_shard_is_one_line(tmp_path):
    family, hf = CASES["llama"]
    config = family.config_from_hf(hf)
    _write_sharded(family, config, tmp_path)
    targets = jax.tree.map(
        lambda t: jax.ShapeDtypeStruct(
            t.shape, t.dtype, sharding=NamedSharding(t.sharding.mesh, PartitionSpec())
        ),
        _targets(family, config),
    )
    shard = tmp_path / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as error:
        streaming.stream_params(family, tmp_path, config, targets)
    message = str(error.value)
    assert message.startswith(f"{shard}: not a readable .safetensors file (")
    assert "\n" not in message

    shard.unlink()
    with pytest.raises(FileNotFoundError) as error:
        streaming.stream_params(family, tmp_path, config, targets)
    message = str(error.value)
    assert message.startswith(f"{shard}: a shard that model.safetensors.index.json lists is")
    assert "\n" not in message
