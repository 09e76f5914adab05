"""The encoder-only (BERT) family: heads, bidirectional packed attention, init loss, scan/remat,
the sharded train step with the NSP loss on every mesh preset, the presets, and its refusals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import load_config

from t5x_like import config as config_lib
from t5x_like import models, partitioning
from t5x_like.data import mlm, tasks
from t5x_like.errors import ConfigError
from t5x_like.experiment import assembly as experiment
from t5x_like.layers.config import TransformerConfig
from t5x_like.models.encoder_only import EncoderOnly, EncoderOnlyTransformer
from t5x_like.training import losses, steps

VOCAB = 128
BERT_LAYOUT = dict(
    vocab_size=VOCAB,
    d_model=32,
    num_layers=2,
    num_heads=4,
    mlp_dim=64,
    activation="gelu_exact",
    norm="layernorm",
    norm_eps=1e-12,
    norm_position="post",
    position="learned",
    max_len=32,
    use_bias=True,
    scale_tied_logits=False,
)


def _model(head="mlm", num_labels=3, **overrides):
    module = EncoderOnlyTransformer(
        TransformerConfig(**{**BERT_LAYOUT, **overrides}), head=head, num_labels=num_labels
    )
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    return module, params


def test_each_head_outputs_its_shapes_and_every_param_has_logical_axes():
    tokens = jnp.arange(3, 19).reshape(2, 8)
    expected = {
        "mlm": {"mlm_logits": (2, 8, VOCAB)},
        "pretraining": {"mlm_logits": (2, 8, VOCAB), "nsp_logits": (2, 2)},
        "classification": {"logits": (2, 3)},
        "token_classification": {"logits": (2, 8, 3)},
        "question_answering": {"start_logits": (2, 8), "end_logits": (2, 8)},
    }
    for head, shapes in expected.items():
        module = EncoderOnlyTransformer(TransformerConfig(**BERT_LAYOUT), head=head, num_labels=3)
        # Shapes only (abstract evaluation): the boxes and their logical names are all we need.
        init = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens)
        params = init["params"]
        out = jax.eval_shape(module.apply, {"params": params}, tokens)
        assert {k: v.shape for k, v in out.items()} == shapes, head
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
        ):
            assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
            assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
        # The pooler exists only for the pooled heads, as in transformers' BERT classes.
        assert ("pooler" in params) == (head in ("pretraining", "classification")), head


def test_packed_examples_do_not_attend_across_documents():
    """Two documents packed in one row (segment ids 1, 2; positions restarting) give exactly
    the logits each gives alone, in both directions (attention is bidirectional)."""
    module, params = _model("mlm")
    a, b = np.arange(5, 12), np.arange(40, 49)
    packed = np.concatenate([a, b, np.zeros(16 - len(a) - len(b), np.int64)])[None]
    segments = np.array([[1] * len(a) + [2] * len(b) + [0] * (16 - len(a) - len(b))])
    positions = np.array([[*range(len(a)), *range(len(b))] + [0] * (16 - len(a) - len(b))])
    types = np.array([[0] * 3 + [1] * 4 + [0] * 9])  # Token types travel with the tokens.
    run = jax.jit(
        lambda t, s, p, y: module.apply(
            {"params": params}, t, token_type_ids=y, segment_ids=s, positions=p
        )["mlm_logits"]
    )
    together = run(packed, segments, positions, types)
    alone_a = run(a[None], None, None, types[:, : len(a)])
    alone_b = run(b[None], None, None, types[:, len(a) : len(a) + len(b)])
    np.testing.assert_allclose(together[0, : len(a)], alone_a[0], atol=2e-5)
    np.testing.assert_allclose(together[0, len(a) : len(a) + len(b)], alone_b[0], atol=2e-5)
    # Bidirectional: a later token changes an earlier token's output.
    changed = packed.copy()
    changed[0, len(a) - 1] = 99
    assert not np.allclose(run(changed, segments, positions, types)[0, 0], together[0, 0])


def test_default_init_starts_the_mlm_loss_near_ln_vocab():
    cfg = load_config("encoder_only")
    cfg.model.vocab_size = 2051  # The default run's: 2048 pieces + [CLS], [SEP], [MASK].
    family = models.get("encoder_only")
    module = family.build(cfg.model)
    params = nn.unbox(family.init_params(module, jax.random.PRNGKey(0), 1))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 64), 3, 2048)
    batch = {
        "inputs": tokens,
        "token_type_ids": jnp.zeros_like(tokens),
        "segment_ids": jnp.ones_like(tokens),
        "positions": jnp.broadcast_to(jnp.arange(64), tokens.shape),
    }
    logits = jax.jit(lambda p, b: family.apply(module, p, b))(params, batch)
    loss = float(losses.token_cross_entropy(logits, tokens)[1].mean())
    assert abs(loss - np.log(2051)) < 0.15, loss


def _stack(params, num_layers):
    params = nn.unbox(params)
    encoder = dict(params["encoder"])
    layers = [encoder.pop(f"layers_{i}") for i in range(num_layers)]
    encoder["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return {**params, "encoder": encoder}


@pytest.mark.parametrize("remat", ["full"])
def test_scanned_and_rematerialised_layers_compute_the_unrolled_model(remat):
    unrolled, params = _model("pretraining")
    scanned, scanned_params = _model("pretraining", scan_layers=True, remat=remat)
    stacked = _stack(params, 2)
    assert jax.tree.structure(stacked) == jax.tree.structure(nn.unbox(scanned_params))
    tokens = jnp.arange(3, 19).reshape(2, 8)

    def loss(model, p):
        out = model.apply({"params": p}, tokens)
        return losses.token_cross_entropy(out["mlm_logits"], tokens)[0].mean() + jnp.mean(
            out["nsp_logits"]
        )

    loss_a, grads_a = jax.jit(jax.value_and_grad(lambda p: loss(unrolled, p)))(nn.unbox(params))
    loss_b, grads_b = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        _stack(grads_a, 2),
        grads_b,
    )


def _tiny_config(preset="fsdp_tp", mesh=None, **model):
    cfg = load_config("encoder_only")
    cfg.model.update(
        vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32, **model
    )
    cfg.model.encoder_head = "pretraining"
    cfg.data.update(seq_len=16, sentence_pair="nsp")
    cfg.train.update(batch_size=8, steps=10, log_every=1, eval_every=0, compilation_cache_dir="")
    cfg.optimizer.update(name="sgd", schedule="constant", warmup_steps=0, learning_rate=0.5)
    cfg.optimizer.grad_clip_norm = 0.0
    cfg.partitioning.preset = preset
    cfg.mesh.update(**(mesh or dict(data=1, fsdp=1, tensor=1)))
    return cfg


def _synthetic_batch(seed=0):
    """Rows of 2 documents each, 15% of the tokens weighted, random NSP labels."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, VOCAB, (8, 16)).astype(np.int32)
    segments = np.repeat([[1] * 9 + [2] * 5 + [0] * 2], 8, axis=0).astype(np.int32)
    positions = np.repeat([[*range(9), *range(5), 0, 0]], 8, axis=0).astype(np.int32)
    rows = mlm.features_from_sides({"encoder": (tokens, segments, positions)}, "nsp")
    rows["weights"] = (rng.random((8, 16)) < 0.15).astype(np.float32) * (segments > 0)
    rows["token_type_ids"] = (positions > 4).astype(np.int32)
    rows["nsp_label"] = rng.integers(0, 2, (8, 1)).astype(np.int32)
    return rows


def _one_step(cfg, devices, batch):
    exp = experiment.assemble_experiment(cfg, devices=devices)
    _, shardings = experiment.state_shardings(exp)
    state = experiment.init_state(exp, shardings)
    jit_train, _ = experiment.jit_steps(exp, shardings)
    with partitioning.activate(exp.mesh, exp.rules):
        state, metrics = jit_train(state, partitioning.global_batch(batch, exp.batch_sharding))
    return jax.device_get(metrics), jax.device_get(state.params)


def test_sharded_train_step_with_nsp_matches_the_single_device_step():
    batch = _synthetic_batch()
    single, single_params = _one_step(_tiny_config(), jax.devices()[:1], batch)
    # The loss: masked-token cross-entropy + NSP cross-entropy (rows weighted by masked tokens).
    summary = losses.summarize(single)
    assert summary["nsp_loss"] == pytest.approx(np.log(2), abs=0.05)
    assert summary["loss"] > summary["cross_entropy"] + 0.5
    # fsdp_tp uses every mesh axis: batch over (data, fsdp), embed over fsdp, heads over tensor.
    for preset, mesh in {"fsdp_tp": dict(data=2, fsdp=2, tensor=2)}.items():
        metrics, params = _one_step(_tiny_config(preset, mesh), jax.devices(), batch)
        for key in ("loss_sum", "nsp_loss_sum", "nsp_correct_sum", "nsp_rows", "weight_sum"):
            np.testing.assert_allclose(metrics[key], single[key], rtol=1e-5, err_msg=preset)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            params,
            single_params,
        )


def test_sentence_loss_sums_known_values():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = jnp.array([0, 0, 1])
    rows = jnp.array([1.0, 1.0, 0.0])
    token_weights = jnp.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    share, sums = losses.sentence_loss_sums("nsp", logits, labels, rows, token_weights)
    ce = [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log(2.0)]
    np.testing.assert_allclose(share, 2 * ce[0] + 1 * ce[1], rtol=1e-6)
    np.testing.assert_allclose(sums["nsp_loss_sum"], ce[0] + ce[1], rtol=1e-6)
    assert float(sums["nsp_correct_sum"]) == 1.0 and float(sums["nsp_rows"]) == 2.0


def test_microbatched_step_equals_the_whole_batch_step_with_nsp():
    module, params = _model("pretraining")
    batch = {k: jnp.asarray(v) for k, v in _synthetic_batch(1).items()}
    run = jax.jit(steps.loss_and_grads, static_argnums=3)
    rng = jax.random.PRNGKey(0)
    whole, grads = run(nn.unbox(params), batch, rng, steps.LossConfig(module))
    micro, micro_grads = run(nn.unbox(params), batch, rng, steps.LossConfig(module, microbatches=2))
    for key in whole:
        np.testing.assert_allclose(micro[key], whole[key], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, micro_grads)


@pytest.mark.parametrize("size", ["tiny", "mini", "small", "medium", "base", "large"])
def test_presets_have_the_bert_dimensions(size):
    cfg = load_config("encoder_only", size)
    config_lib.check_fields(cfg)
    dims = {k: cfg.model[k] for k in ("num_layers", "d_model", "num_heads", "mlp_dim")}
    published = {
        "tiny": (2, 128, 2),
        "mini": (4, 256, 4),
        "small": (4, 512, 8),
        "medium": (8, 512, 8),
        "base": (12, 768, 12),
        "large": (24, 1024, 16),
    }[size]
    assert (dims["num_layers"], dims["d_model"], dims["num_heads"]) == published
    assert dims["mlp_dim"] == 4 * dims["d_model"]


def test_unknown_size_is_one_line_listing_the_choices():
    with pytest.raises(ConfigError) as e:
        load_config("encoder_only", "huge")
    assert str(e.value) == (
        "unknown size 'huge'; choose one of tiny, mini, small, medium, base, large"
    )


def test_decoding_and_bad_configs_are_refused_with_one_line():
    family = models.get("encoder_only")
    module, _ = _model()
    for call in (
        lambda: family.decode_context(module, {}, {}),
        lambda: family.prefill_inputs({}),
        lambda: family.prompt_batch(None, ["a"], 1, 4, None, 0),
        lambda: family.check_prompt_fits(4, 4, module.config),
    ):
        with pytest.raises(ValueError, match=r"^model.family='encoder_only' does not generate"):
            call()
    assert family.supports_decoded_metrics is False
    with pytest.raises(ConfigError, match=r"Set train.decode_batches=0"):
        family.check_decode_batches(1)

    def validate(**changes):
        cfg = _tiny_config()
        for path, value in changes.items():
            section, field = path.split(".")
            cfg[section][field] = value
        family.validate(cfg, tasks.Task.from_config(cfg.data))

    validate()
    cases = {
        "model.position": ("rope", r"set model.position='learned'"),
        "data.sentence_pair": ("none", r"needs sentence pairs: set data.sentence_pair='nsp'"),
        "model.encoder_head": ("classification", r"cannot train on data.task='mlm'"),
        "train.loss_chunk_size": (16, r"set train.loss_chunk_size=0"),
    }
    for path, (value, message) in cases.items():
        with pytest.raises(ConfigError, match=message) as e:
            validate(**{path: value})
        assert "\n" not in str(e.value)
    # Causal-LM rows lack the encoder features; MLM rows carry ones a decoder would ignore.
    with pytest.raises(ConfigError, match=r"data.task='causal_lm' does not make encoder-only"):
        family.validate(_tiny_config(), tasks.Task("causal_lm", seq_len=8))
    with pytest.raises(ConfigError, match=r"'token_type_ids'.*model.family='decoder_only'"):
        models.get("decoder_only").validate(_tiny_config(), tasks.Task("mlm", seq_len=8))


def test_flops_count_the_tied_decoder_but_not_the_lookup_tables():
    family = EncoderOnly()
    module, params = _model()
    params = nn.unbox(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    lookups = params["position_embed"]["embedding"].size + params["token_type_embedding"].size
    task = tasks.Task("mlm", seq_len=16)
    attention = 12 * 2 * 16 * 4 * 8
    assert family.train_flops_per_token(params, module.config, task) == 6 * (n - lookups) + (
        attention
    )


def test_fine_tuning_heads_train_with_the_token_loss_on_their_rows():
    """Classification: cross-entropy of the label; tagging: of each weighted token's tag; QA:
    the mean of the start and end cross-entropies (BERT's), all through steps.model_loss_sums."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, VOCAB, (4, 8)), jnp.int32)
    base = {
        "inputs": tokens,
        "token_type_ids": jnp.zeros_like(tokens),
        "segment_ids": jnp.ones_like(tokens),
        "positions": jnp.broadcast_to(jnp.arange(8), (4, 8)),
    }
    rows = {
        "classification": {
            "label": jnp.array([[0], [2], [1], [1]]),
            "weights": jnp.array([[1.0], [1.0], [1.0], [0.0]]),
        },
        "token_classification": {
            "targets": jnp.asarray(rng.integers(0, 3, (4, 8)), jnp.int32),
            "weights": jnp.asarray(rng.random((4, 8)) < 0.5, jnp.float32),
        },
        "question_answering": {
            "start_positions": jnp.array([[1], [0], [5], [7]]),
            "end_positions": jnp.array([[3], [0], [6], [7]]),
            "weights": jnp.ones((4, 1)),
        },
    }
    for head, targets in rows.items():
        module, params = _model(head)
        params = nn.unbox(params)
        batch = {**base, **targets}
        sums = steps.model_loss_sums(module, params, batch)
        out = module.apply({"params": params}, tokens)
        if head == "question_answering":
            ce = [
                -jax.nn.log_softmax(out[k])[np.arange(4), batch[t][:, 0]]
                for k, t in (("start_logits", "start_positions"), ("end_logits", "end_positions"))
            ]
            expected = float(jnp.mean((ce[0] + ce[1]) / 2))
        elif head == "classification":
            ce = -jax.nn.log_softmax(out["logits"])[np.arange(4), batch["label"][:, 0]]
            expected = float(jnp.sum(ce * batch["weights"][:, 0]) / 3)
        else:
            log_probs = jax.nn.log_softmax(out["logits"])
            ce = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
            expected = float(jnp.sum(ce * batch["weights"]) / jnp.sum(batch["weights"]))
        summary = losses.summarize(jax.device_get(sums))
        assert summary["loss"] == pytest.approx(expected, rel=1e-5), head
        family = models.get("encoder_only")
        cfg = _tiny_config()
        cfg.model.encoder_head = head
        cfg.data.task = head
        family.validate(cfg, tasks.Task(head, seq_len=128))
