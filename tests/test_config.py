"""Config errors: each a clear message naming the field, raised before anything compiles."""

import jax
import pytest
from testutil import load_config, tiny_config, tiny_t5_config

from t5x_like import config as config_lib
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import validation
from t5x_like.training import compilation

BAD_CONFIGS = [
    (
        {"model.d_model": 30, "model.num_heads": 4},
        r"model.d_model=30 is not divisible by model.num_heads=4",
    ),
    ({"model.num_kv_heads": 3}, r"model.num_heads=4 is not a multiple of model.num_kv_heads=3"),
    ({"mesh.data": 3}, r"= 3 devices, but this run has 8"),
    ({"mesh.data": 3, "mesh.fsdp": -1}, r"mesh .* cannot fill 8 devices"),
    (
        {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1},
        r"= 4 devices, but this run has 8",
    ),
    (
        {"train.batch_size": 12},
        r"train.batch_size=12 is not divisible by the data-parallel size .* = 8",
    ),
    ({"model.activation": "swish"}, r"model.activation='swish' is not supported; choose one of"),
    ({"model.position": "alibi"}, r"model.position='alibi' is not supported; choose one of"),
    ({"model.norm": "batchnorm"}, r"model.norm='batchnorm' is not supported"),
    ({"optimizer.name": "lamb"}, r"optimizer.name='lamb' is not supported"),
    ({"model.num_layers": 0}, r"model.num_layers=0 must be a positive integer"),
    ({"optimizer.warmup_steps": 20}, r"warmup_steps=20 must be smaller than train.steps=10"),
    (
        {"mesh.data": 1, "mesh.tensor": 8},
        r"model.num_heads=4 is not divisible by the mesh axes \('tensor',\) \(size 8\)",
    ),
    (
        {"model.position": "learned", "model.max_len": 8},
        r"data.seq_len=16 exceeds model.max_len=8",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS, ids=lambda x: str(x)[:40])
def test_bad_config_fails_fast_with_clear_message(overrides, message):
    cfg = tiny_config(**overrides)
    compiles = compilation.compile_count()
    with pytest.raises(ConfigError, match=message):
        experiment.assemble_experiment(cfg)
    assert compilation.compile_count() == compiles  # Nothing was compiled before the error.


BAD_T5_CONFIGS = [
    ({"data.task": "causal_lm", "data.seq_len": 16}, r"data.task='causal_lm' makes decoder-only"),
    ({"model.family": "decoder_only"}, r"data.task='seq2seq' makes encoder-decoder rows"),
    (
        {
            "data.task": "span_corruption",
            "data.inputs_len": 64,
            "data.targets_len": 20,
            "data.extra_ids": 2,
        },
        r"data.extra_ids=2 is too few for span corruption: .* Set data.extra_ids >= \d+",
    ),
    (
        {"data.task": "span_corruption", "data.inputs_len": 64, "data.targets_len": 4},
        r"data.targets_len=4 is too small for span corruption .* Set data.targets_len >= \d+",
    ),
    ({"data.task": "summarise"}, r"data.task='summarise' is not a task"),
    ({"data.noise_density": 1.5, "data.task": "span_corruption"}, r"data.noise_density=1.5"),
    ({"model.norm_position": "middle"}, r"model.norm_position='middle' is not supported"),
    ({"model.relative_attention_num_buckets": 2}, r"relative_attention_num_buckets=2 must be"),
    ({"model.num_decoder_layers": 0}, r"model.num_decoder_layers=0 must be a positive integer"),
    ({"train.decode_batches": -1}, r"train.decode_batches=-1 must be an integer >= 0"),
]


@pytest.mark.parametrize("overrides, message", BAD_T5_CONFIGS, ids=lambda x: str(x)[:40])
def test_bad_t5_config_fails_fast_with_clear_message(overrides, message):
    cfg = tiny_t5_config(**overrides)
    compiles = compilation.compile_count()
    with pytest.raises(ConfigError, match=message):
        experiment.assemble_experiment(cfg)
    assert compilation.compile_count() == compiles


def test_decode_metrics_need_the_encoder_decoder_family():
    with pytest.raises(ConfigError, match=r"train.decode_batches > 0 .* needs model.family"):
        experiment.assemble_experiment(tiny_config(**{"train.decode_batches": 2}))


@pytest.mark.parametrize(
    "name, arg, family",
    [
        ("t5", "base", "encoder_decoder"),
        ("t5", "small,v1_0", "encoder_decoder"),
        ("t5", "tiny,vanilla", "encoder_decoder"),
        ("t5_finetune", "classify,base", "encoder_decoder"),
    ],
)
def test_t5_presets_are_valid(name, arg, family):
    cfg = load_config(name, arg)
    assert cfg.model.family == family
    validation.validate_config(cfg, device_count=8)


def test_t5_presets_have_published_dimensions():
    xxl = load_config("t5", "xxl").model
    assert (xxl.d_model, xxl.num_heads, xxl.head_dim, xxl.mlp_dim, xxl.num_layers) == (
        4096,
        64,
        64,
        10240,
        24,
    )
    v1_0 = load_config("t5", "small,v1_0").model
    assert (v1_0.activation, v1_0.tie_embeddings) == ("relu", True)
    with pytest.raises(ConfigError, match="unknown size 'huge'; choose one of tiny, small, base"):
        load_config("t5", "huge")


def test_default_config_is_valid_on_8_devices():
    mesh = validation.validate_config(load_config(), device_count=8)
    assert mesh == {"data": 8, "fsdp": 1, "tensor": 1}


def test_mesh_minus_one_fills_remaining_devices():
    cfg = tiny_config(**{"mesh.data": 2, "mesh.fsdp": -1, "mesh.tensor": 2})
    assert validation.resolve_mesh_shape(cfg.mesh, jax.device_count()) == {
        "data": 2,
        "fsdp": 2,
        "tensor": 2,
    }


def test_model_vocab_smaller_than_vocabulary_is_an_error():
    class FakeVocab:
        vocab_size = 1000

    cfg = tiny_config(**{"model.vocab_size": 512})
    with pytest.raises(ConfigError, match=r"model.vocab_size=512 is smaller than the vocabulary"):
        experiment.assemble_experiment(cfg, vocab=FakeVocab())


def test_saved_config_round_trips_as_json(tmp_path):
    cfg = tiny_config()
    path = config_lib.save_config(cfg, str(tmp_path))
    text = open(path).read()
    assert '"num_layers": 2' in text and '"seq_len": 16' in text
