"""Each partitioning preset shards params, Adam state and batches as documented, and one sharded
train step equals the one-device step."""

import jax
import numpy as np
import pytest
from testutil import synthetic_batch, tiny_config

from t5x_like import partitioning
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment

# preset -> (mesh, expected specs of: embedding, query, out, wi_0, wo, norm scale; batch).
EXPECTED = {
    "dp": (
        dict(data=8, fsdp=1, tensor=1),
        {"embedding": (), "query": (), "out": (), "wi_0": (), "wo": (), "norm": ()},
        (("data", "fsdp"),),
    ),
    "fsdp": (
        dict(data=1, fsdp=8, tensor=1),
        {
            "embedding": (None, "fsdp"),
            "query": ("fsdp",),
            "out": (None, None, "fsdp"),
            "wi_0": ("fsdp",),
            "wo": (None, "fsdp"),
            "norm": ("fsdp",),
        },
        (("data", "fsdp"),),
    ),
    "tp": (
        dict(data=2, fsdp=1, tensor=4),
        {
            "embedding": ("tensor",),
            "query": (None, "tensor"),
            "out": ("tensor",),
            "wi_0": (None, "tensor"),
            "wo": ("tensor",),
            "norm": (),
        },
        ("data",),
    ),
    "fsdp_tp": (
        dict(data=1, fsdp=2, tensor=4),
        {
            "embedding": ("tensor", "fsdp"),
            "query": ("fsdp", "tensor"),
            "out": ("tensor", None, "fsdp"),
            "wi_0": ("fsdp", "tensor"),
            "wo": ("tensor", "fsdp"),
            "norm": ("fsdp",),
        },
        (("data", "fsdp"),),
    ),
}


def _spec(spec, ndim):
    """A PartitionSpec as a tuple of length ndim (trailing Nones made explicit)."""
    spec = tuple(spec)
    return spec + (None,) * (ndim - len(spec))


def _config(preset, mesh, optimizer="adamw"):
    # 4 KV heads: divisible by tensor=4.
    cfg = tiny_config(**{"model.num_kv_heads": 4, "partitioning.preset": preset})
    cfg.mesh.update(**mesh)
    if optimizer == "sgd":  # Exact comparisons: Adam's first step is ~lr * sign(g).
        cfg.optimizer.update(name="sgd", schedule="constant", warmup_steps=0, learning_rate=0.5)
        cfg.optimizer.grad_clip_norm = 0.0
    return cfg


def _named(tree):
    layer = tree["decoder"]["layers_0"]
    return {
        "embedding": tree["token_embed"]["embedding"],
        "query": layer["self_attention"]["query"]["kernel"],
        "out": layer["self_attention"]["out"]["kernel"],
        "wi_0": layer["mlp"]["wi_0"]["kernel"],
        "wo": layer["mlp"]["wo"]["kernel"],
        "norm": layer["pre_mlp_norm"]["scale"],
    }


def _one_step(cfg, devices, batch):
    """(loss, initial params on the host, state after one step) of a fresh run of `cfg`."""
    exp = experiment.assemble_experiment(cfg, devices=devices)
    _, shardings = experiment.state_shardings(exp)
    state = experiment.init_state(exp, shardings)
    initial = jax.device_get(state.params)  # Before the step donates the state.
    jit_train, _ = experiment.jit_steps(exp, shardings)
    with partitioning.activate(exp.mesh, exp.rules):
        state, metrics = jit_train(state, partitioning.global_batch(batch, exp.batch_sharding))
    return float(metrics["loss_sum"] / metrics["weight_sum"]), initial, state


@pytest.fixture(scope="module")
def batch():
    return synthetic_batch(8, 16, 128, seed=3)


@pytest.fixture(scope="module")
def single_device(batch):
    cfg = _config("fsdp_tp", dict(data=1, fsdp=1, tensor=1), "sgd")
    loss, initial, state = _one_step(cfg, jax.devices()[:1], batch)
    return loss, initial, jax.device_get(state.params)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_shards_params_adam_state_and_batch(preset):
    mesh, specs, batch_spec = EXPECTED[preset]
    exp = experiment.assemble_experiment(_config(preset, mesh))
    abstract, shardings = experiment.state_shardings(exp)
    params = _named(shardings.params)
    # optax.chain(clip, adamw): opt_state[1][0] is Adam's (count, mu, nu).
    adam = shardings.opt_state[1][0]
    shapes = _named(abstract.params)
    for name, spec in specs.items():
        ndim = len(shapes[name].shape)
        assert _spec(params[name].spec, ndim) == _spec(spec, ndim), (preset, name)
        for moments in (adam.mu, adam.nu):
            assert _spec(_named(moments)[name].spec, ndim) == _spec(spec, ndim), (preset, name)
    assert _spec(exp.batch_sharding.spec, 2) == _spec(batch_spec, 2)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_step_matches_single_device(preset, batch, single_device):
    mesh, specs, _ = EXPECTED[preset]
    loss, _, state = _one_step(_config(preset, mesh, "sgd"), jax.devices(), batch)
    single_loss, initial, single_params = single_device
    np.testing.assert_allclose(loss, single_loss, rtol=1e-5)
    # The updated params really live sharded as the preset says, and equal the 1-device ones.
    for name, array in _named(state.params).items():
        assert _spec(array.sharding.spec, array.ndim) == _spec(specs[name], array.ndim), name
    flat_single = jax.tree_util.tree_leaves_with_path(single_params)
    flat = jax.tree.leaves(jax.device_get(state.params))
    for (path, a), b in zip(flat_single, flat, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    moved = max(
        float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(initial), flat, strict=True)
    )
    assert moved > 1e-3  # The step really changed the params.


def test_unused_mesh_axis_is_a_config_error():
    cfg = _config("fsdp", dict(data=4, fsdp=1, tensor=2))
    with pytest.raises(
        ConfigError,
        match=r"mesh.tensor=2 but partitioning.preset='fsdp' shards nothing over tensor: use "
        r"partitioning.preset='fsdp_tp' or set mesh.tensor=1",
    ):
        experiment.assemble_experiment(cfg)
    cfg = _config("tp", dict(data=1, fsdp=2, tensor=4))
    with pytest.raises(ConfigError, match=r"mesh.fsdp=2 but partitioning.preset='tp'"):
        experiment.assemble_experiment(cfg)


def test_preset_and_rules_errors_and_custom_rules():
    with pytest.raises(ConfigError, match=r"partitioning.preset='zero3' is not supported"):
        experiment.assemble_experiment(_config("zero3", dict(data=8, fsdp=1, tensor=1)))
    cfg = _config("dp", dict(data=8, fsdp=1, tensor=1))
    cfg.partitioning.rules = (("batch", "data"),)
    with pytest.raises(ConfigError, match=r"set partitioning.preset='custom'"):
        experiment.assemble_experiment(cfg)
    cfg = _config("custom", dict(data=8, fsdp=1, tensor=1))
    with pytest.raises(ConfigError, match=r"'custom' needs partitioning.rules"):
        experiment.assemble_experiment(cfg)
    # "custom" with the fsdp_tp table written out (how configs spelled it before presets, and
    # how older workdirs' config.json without a preset are read) gives the same rules.
    cfg.partitioning.rules = partitioning.PRESETS["fsdp_tp"]
    assert experiment.assemble_experiment(cfg).rules == partitioning.PRESETS["fsdp_tp"]
    del cfg.partitioning["preset"]
    assert experiment.assemble_experiment(cfg).rules == partitioning.PRESETS["fsdp_tp"]
