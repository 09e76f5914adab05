"""Sharded training equals one-device training, and state is sharded as the rules say."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from testutil import synthetic_batch, synthetic_encdec_batch, tiny_config, tiny_t5_config

from t5x_like import partitioning
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import validation


def _run(cfg, devices, batches):
    exp = experiment.assemble_experiment(cfg, devices=devices)
    _, shardings = experiment.state_shardings(exp)
    state = experiment.init_state(exp, shardings)
    jit_train, _ = experiment.jit_steps(exp, shardings)
    losses = []
    with partitioning.activate(exp.mesh, exp.rules):
        for batch in batches:
            state, metrics = jit_train(state, partitioning.global_batch(batch, exp.batch_sharding))
            losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    return losses, state


def _sgd_config(make_config=tiny_config, **mesh):
    cfg = make_config()
    cfg.optimizer.update(name="sgd", schedule="constant", warmup_steps=0, learning_rate=0.5)
    cfg.optimizer.grad_clip_norm = 0.0
    cfg.mesh.update(**mesh)
    return cfg


def test_sharded_step_matches_single_device():
    """3 SGD steps on a (data=2, fsdp=2, tensor=2) mesh vs one device: rtol 1e-5 on loss/params."""
    batches = [synthetic_batch(8, 16, 128, seed=s) for s in range(3)]
    single_losses, single = _run(_sgd_config(data=1, fsdp=1, tensor=1), jax.devices()[:1], batches)
    sharded_losses, sharded = _run(_sgd_config(data=2, fsdp=2, tensor=2), jax.devices(), batches)
    assert single_losses[0] > single_losses[-1]  # SGD really moved the params.
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
    flat_single = jax.tree_util.tree_leaves_with_path(jax.device_get(single.params))
    flat_sharded = jax.tree.leaves(jax.device_get(sharded.params))
    for (path, a), b in zip(flat_single, flat_sharded, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_sharded_encoder_decoder_step_matches_single_device():
    """T5 v1.1: 3 SGD steps on a (2, 2, 2) mesh vs one device, and its params' shardings."""
    batches = [synthetic_encdec_batch(8, 16, 8, 128, seed=s) for s in range(3)]
    single_cfg = _sgd_config(tiny_t5_config, data=1, fsdp=1, tensor=1)
    single_losses, single = _run(single_cfg, jax.devices()[:1], batches)
    sharded_cfg = _sgd_config(tiny_t5_config, data=2, fsdp=2, tensor=2)
    sharded_losses, sharded = _run(sharded_cfg, jax.devices(), batches)
    assert single_losses[0] > single_losses[-1]
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
    flat_single = jax.tree_util.tree_leaves_with_path(jax.device_get(single.params))
    flat_sharded = jax.tree.leaves(jax.device_get(sharded.params))
    for (path, a), b in zip(flat_single, flat_sharded, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    params = sharded.params
    decoder = params["decoder"]["layers_0"]
    assert params["logits"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert decoder["cross_attention"]["key"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert params["encoder"]["relpos_bias"]["rel_embedding"].sharding.spec == P(None, "tensor")


def test_params_and_adam_state_sharded_as_rules_say():
    cfg = tiny_config()
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    exp = experiment.assemble_experiment(cfg)
    _, shardings = experiment.state_shardings(exp)
    state = experiment.init_state(exp, shardings)
    params = state.params
    layer = params["decoder"]["layers_0"]
    expected = {
        "embedding": (params["token_embed"]["embedding"], P("tensor", "fsdp")),
        "query": (layer["self_attention"]["query"]["kernel"], P("fsdp", "tensor", None)),
        "key": (layer["self_attention"]["key"]["kernel"], P("fsdp", "tensor", None)),
        "out": (layer["self_attention"]["out"]["kernel"], P("tensor", None, "fsdp")),
        "wi_0": (layer["mlp"]["wi_0"]["kernel"], P("fsdp", "tensor")),
        "wo": (layer["mlp"]["wo"]["kernel"], P("tensor", "fsdp")),
        "norm": (layer["pre_mlp_norm"]["scale"], P("fsdp")),
    }
    for name, (array, spec) in expected.items():
        assert array.sharding.spec == spec, name
        # Each device really holds only its slice.
        shard_shape = array.addressable_shards[0].data.shape
        assert shard_shape == array.sharding.shard_shape(array.shape), name
        assert np.prod(shard_shape) < np.prod(array.shape), name
    # optax.chain(clip, adamw): state[1][0] is Adam's (count, mu, nu).
    adam = state.opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        mu_query = moments["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]
        assert mu_query.sharding.spec == P("fsdp", "tensor", None)
        assert moments["token_embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert adam.count.sharding.spec == P()


def test_scanned_layers_shard_like_unrolled_ones_with_a_replicated_layers_axis():
    cfg = _sgd_config(data=2, fsdp=2, tensor=2)
    cfg.model.update(scan_layers=True, remat="full")
    batches = [synthetic_batch(8, 16, 128, seed=s) for s in range(2)]
    losses, state = _run(cfg, jax.devices(), batches)
    assert np.isfinite(losses).all()
    query = state.params["decoder"]["layers"]["self_attention"]["query"]["kernel"]
    assert query.shape[0] == cfg.model.num_layers
    assert query.sharding.spec == P(None, "fsdp", "tensor", None)


def test_indivisible_param_dimension_is_a_config_error():
    cfg = tiny_config(**{"model.mlp_dim": 66})
    cfg.mesh.update(data=2, fsdp=1, tensor=4)
    cfg.model.num_kv_heads = 4
    exp = experiment.assemble_experiment(cfg)
    with pytest.raises(ConfigError, match=r"mlp/wi_0/kernel.*not divisible"):
        experiment.state_shardings(exp)


def test_make_mesh_rejects_wrong_device_count():
    with pytest.raises(ConfigError, match="needs 4 devices but 8 are available"):
        partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})


def test_rules_reject_unknown_mesh_axis():
    with pytest.raises(ConfigError, match="unknown mesh axis 'model'"):
        partitioning.rules_from_config([("embed", "model")])


class _FakeTpu:
    """Just what the multi-slice mesh code reads of a device (a CPU platform, so that the
    per-slice layout is a plain reshape rather than a TPU torus search)."""

    platform = "cpu"
    device_kind = "fake"

    def __init__(self, id_: int, slice_index: int):
        self.id = id_
        self.slice_index = slice_index
        self.process_index = id_ // 2

    def __repr__(self) -> str:
        return f"d{self.id}s{self.slice_index}"


def test_multi_slice_mesh_keeps_fsdp_and_tensor_inside_a_slice():
    # 8 devices in 2 slices, listed interleaved so that order alone would mix the slices.
    devices = [_FakeTpu(i, slice_index=i % 2) for i in range(8)]
    grid = partitioning.hybrid_device_grid((4, 2, 1), devices, num_slices=2)
    assert grid.shape == (4, 2, 1)
    # Rows 0-1 of the data axis are slice 0, rows 2-3 slice 1: only `data` crosses slices.
    slices = np.vectorize(lambda d: d.slice_index)(grid)
    assert slices[:2].tolist() == [[[0], [0]]] * 2 and slices[2:].tolist() == [[[1], [1]]] * 2
    assert sorted(d.id for d in grid.flat) == list(range(8))


def test_multi_slice_mesh_errors_name_the_fix():
    devices = [_FakeTpu(i, slice_index=i // 4) for i in range(8)]
    with pytest.raises(ConfigError, match=r"mesh.data=3 is not divisible by mesh.num_slices=2"):
        partitioning.hybrid_device_grid((3, 1, 1), devices[:3], num_slices=2)
    with pytest.raises(ConfigError, match=r"belong to 2 slices: set mesh.num_slices=2"):
        partitioning.hybrid_device_grid((8, 1, 1), devices, num_slices=4)
    # One process of CPU devices (no slice_index) is one granule.
    with pytest.raises(ConfigError, match=r"belong to 1 processes: set mesh.num_slices=1"):
        partitioning.make_mesh({"data": 8, "fsdp": 1, "tensor": 1}, num_slices=2)
    cfg = tiny_config(**{"mesh.data": 8, "mesh.num_slices": 3})
    with pytest.raises(ConfigError, match=r"mesh.num_slices=3 must be a positive integer dividing"):
        validation.validate_config(cfg, 8)
