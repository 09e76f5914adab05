"""KV-cache decoding: cached logits equal full forward passes, greedy equals a reference loop,
beam search and sampling agree with greedy where they must, EOS stops rows, seeds reproduce,
beam search is exact when it may keep every candidate, a sharded mesh decodes the same, and
the compiled decoding loop neither transposes nor copies the KV cache."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import tiny_config, tiny_t5_config

from t5x_like import decoding, partitioning
from t5x_like.experiment import assembly as experiment
from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer
from t5x_like.models.encoder_decoder import EncoderDecoderTransformer

VOCAB = 64
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
DECODER_VARIANTS = {
    "rope_gqa": dict(position="rope", num_kv_heads=2),
    "learned_layernorm": dict(position="learned", norm="layernorm", use_bias=True),
    "relative_scanned": dict(position="relative", scan_layers=True),
}


def _init(model, *inputs):
    params = model.init(jax.random.PRNGKey(0), *inputs)["params"]
    return jax.tree.map(lambda x: x.value, params, is_leaf=lambda x: hasattr(x, "value"))


def _decoder_only(**kw):
    cfg = TransformerConfig(
        vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, **kw
    )
    model = DecoderOnlyTransformer(cfg)
    return model, _init(model, jnp.zeros((1, 4), jnp.int32))


def _t5(**kw):
    cfg = TransformerConfig(
        vocab_size=VOCAB,
        d_model=32,
        num_layers=2,
        num_heads=4,
        mlp_dim=64,
        position="relative",
        activation="geglu",
        tie_embeddings=False,
        scale_attention_logits=False,
        **kw,
    )
    model = EncoderDecoderTransformer(cfg)
    tokens = jnp.zeros((1, 4), jnp.int32)
    return model, _init(model, tokens, tokens)


def _t5_prompts():
    rng = np.random.default_rng(0)
    encoder_inputs = rng.integers(3, VOCAB, (3, 9)).astype(np.int32)
    segment_ids = np.ones_like(encoder_inputs)
    segment_ids[1, 4:] = 0  # Right-padded rows are fine for the encoder.
    segment_ids[2, 7:] = 0
    return {"encoder_inputs": encoder_inputs * segment_ids, "encoder_segment_ids": segment_ids}


@pytest.mark.parametrize("variant", DECODER_VARIANTS.values(), ids=DECODER_VARIANTS.keys())
def test_cached_logits_equal_full_forward_at_every_position(variant):
    """Prefill a left-padded batch, then feed known tokens one at a time through the cache."""
    model, params = _decoder_only(**variant)
    continuation = np.random.default_rng(1).integers(3, VOCAB, (len(PROMPTS), 6)).astype(np.int32)
    prompts = decoding.left_pad(PROMPTS)
    decoder = decoding.CachedDecoder(model, params, prompts)
    width = prompts["tokens"].shape[1]
    positions = np.maximum(np.cumsum(prompts["segment_ids"], axis=1) - 1, 0)
    cache = decoder.init_cache(len(PROMPTS), width + continuation.shape[1])
    prefill, cache = decoder.step(cache, prompts["tokens"], prompts["segment_ids"], positions)
    steps = []
    next_position = positions[:, -1] + 1
    for t in range(continuation.shape[1]):
        ones = np.ones((len(PROMPTS), 1), np.int32)
        logits, cache = decoder.step(
            cache, continuation[:, t : t + 1], ones, (next_position + t)[:, None]
        )
        steps.append(np.asarray(logits[:, 0]))
    worst = 0.0
    for row, prompt in enumerate(PROMPTS):
        full = model.apply({"params": params}, np.asarray([[*prompt, *continuation[row]]]))[0]
        cached = np.concatenate(
            [np.asarray(prefill[row, width - len(prompt) :]), np.stack([s[row] for s in steps])]
        )
        worst = max(worst, float(np.abs(cached - full).max()))
        np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)
    print(f"cached vs full forward, max abs logit difference {worst:.2e}")


def test_prefill_logits_of_the_last_position_only_equal_the_full_prefill():
    model, params = _decoder_only(position="rope", num_kv_heads=2)
    prompts = decoding.left_pad(PROMPTS)
    decoder = decoding.CachedDecoder(model, params, prompts)
    positions = np.maximum(np.cumsum(prompts["segment_ids"], axis=1) - 1, 0)
    args = (prompts["tokens"], prompts["segment_ids"], positions)
    cache = decoder.init_cache(len(PROMPTS), prompts["tokens"].shape[1] + 2)
    full, full_cache = decoder.step(cache, *args)
    last, last_cache = decoder.step(cache, *args, last_only=True)
    assert last.shape == (len(PROMPTS), 1, VOCAB)
    np.testing.assert_allclose(last, full[:, -1:], atol=1e-6, rtol=0)
    jax.tree.map(np.testing.assert_array_equal, last_cache, full_cache)


def test_encoder_decoder_cached_logits_equal_full_forward():
    model, params = _t5()
    prompts = _t5_prompts()
    targets = np.random.default_rng(2).integers(3, VOCAB, (3, 7)).astype(np.int32)
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))  # Start token 0, then targets.
    full = model.apply(
        {"params": params},
        prompts["encoder_inputs"],
        decoder_inputs,
        encoder_segment_ids=prompts["encoder_segment_ids"],
    )
    decoder = decoding.CachedDecoder(model, params, prompts)
    cache = decoder.init_cache(3, decoder_inputs.shape[1])
    ones = np.ones((3, 1), np.int32)
    cached = []
    for t in range(decoder_inputs.shape[1]):
        logits, cache = decoder.step(cache, decoder_inputs[:, t : t + 1], ones, ones * t)
        cached.append(np.asarray(logits[:, 0]))
    cached = np.stack(cached, axis=1)
    print(f"T5 cached vs full forward, max abs logit difference {np.abs(cached - full).max():.2e}")
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)


def _reference_greedy_decoder_only(model, params, prompt, steps):
    """Greedy by full forward passes over a fixed-size buffer (causal: later slots are unseen)."""
    forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
    tokens = np.zeros((1, len(prompt) + steps), np.int32)
    tokens[0, : len(prompt)] = prompt
    for t in range(len(prompt), len(prompt) + steps):
        tokens[0, t] = int(np.argmax(forward(tokens)[0, t - 1]))
    return tokens[0, len(prompt) :].tolist()


def _reference_greedy_t5(model, params, prompts, row, steps):
    forward = jax.jit(
        lambda decoder_tokens: model.apply(
            {"params": params},
            prompts["encoder_inputs"][row : row + 1],
            decoder_tokens,
            encoder_segment_ids=prompts["encoder_segment_ids"][row : row + 1],
        )
    )
    tokens = np.zeros((1, steps + 1), np.int32)  # Start token 0, then the outputs.
    for t in range(steps):
        tokens[0, t + 1] = int(np.argmax(forward(tokens)[0, t]))
    return tokens[0, 1:].tolist()


def _generate(model, params, prompts, eos_id=None, **config):
    config = decoding.DecodeConfig(**{"max_new_tokens": 8, **config})
    return decoding.generate(model, params, prompts, config, eos_id=eos_id)


def test_greedy_equals_a_loop_of_full_forward_passes():
    model, params = _decoder_only(position="rope", num_kv_heads=2)
    out = _generate(model, params, decoding.left_pad(PROMPTS))
    for row, prompt in enumerate(PROMPTS):
        expected = _reference_greedy_decoder_only(model, params, prompt, 8)
        np.testing.assert_array_equal(out.tokens[row], expected)
    assert out.lengths.tolist() == [8, 8, 8]

    t5, t5_params = _t5()
    prompts = _t5_prompts()
    out = _generate(t5, t5_params, prompts)
    for row in range(3):
        expected = _reference_greedy_t5(t5, t5_params, prompts, row, 8)
        np.testing.assert_array_equal(out.tokens[row], expected)


@pytest.mark.parametrize("family", ["decoder_only", "encoder_decoder"])
def test_beam_1_top_k_1_and_tiny_top_p_all_equal_greedy(family):
    if family == "decoder_only":
        model, params = _decoder_only(position="rope")
        prompts = decoding.left_pad(PROMPTS)
    else:
        (model, params), prompts = _t5(), _t5_prompts()
    greedy = _generate(model, params, prompts)
    for config in (
        dict(strategy="beam", num_beams=1, length_penalty=0.0),
        dict(strategy="sample", top_k=1, seed=3),
        dict(strategy="sample", top_p=1e-6, seed=4),
    ):
        out = _generate(model, params, prompts, **config)
        np.testing.assert_array_equal(out.tokens, greedy.tokens, err_msg=str(config))
        np.testing.assert_allclose(out.scores, greedy.scores, rtol=1e-5, err_msg=str(config))


def test_sampling_is_reproducible_by_seed():
    model, params = _decoder_only(position="rope")
    prompts = decoding.left_pad(PROMPTS)
    settings = dict(strategy="sample", temperature=1.5, top_k=20, top_p=0.95, max_new_tokens=12)
    first = _generate(model, params, prompts, seed=7, **settings)
    again = _generate(model, params, prompts, seed=7, **settings)
    other = _generate(model, params, prompts, seed=8, **settings)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert not np.array_equal(first.tokens, other.tokens)
    # Top-k keeps sampled tokens among the k most likely: greedy's first token is one of them.
    assert np.all(first.tokens >= 0) and np.all(first.tokens < VOCAB)


def test_eos_stops_each_row_and_pads_after_it():
    model, params = _decoder_only(position="rope")
    prompts = decoding.left_pad(PROMPTS)
    free = _generate(model, params, prompts)
    eos = int(free.tokens[0, -1])  # Row 0 emits this token last (maybe earlier too): the EOS.
    out = _generate(model, params, prompts, eos_id=eos)
    for row in range(len(PROMPTS)):
        tokens = free.tokens[row].tolist()
        length = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        assert out.lengths[row] == length
        np.testing.assert_array_equal(out.tokens[row, :length], tokens[:length])
        assert not np.any(out.tokens[row, length:])
    assert out.lengths[0] == free.tokens[0].tolist().index(eos) + 1


def test_beam_search_with_every_candidate_kept_is_exhaustive_search():
    """num_beams = vocab over 2 steps keeps every 2-token continuation: the best is exact."""
    model, params = _decoder_only(position="rope")
    prompt = [5, 6, 7]
    out = _generate(
        model,
        params,
        decoding.left_pad([prompt]),
        strategy="beam",
        num_beams=VOCAB,
        max_new_tokens=2,
        length_penalty=0.0,
    )
    first, second = np.meshgrid(np.arange(VOCAB), np.arange(VOCAB), indexing="ij")
    candidates = np.stack([first.ravel(), second.ravel()], axis=1)
    batch = np.concatenate([np.tile(prompt, (len(candidates), 1)), candidates], axis=1)
    log_probs = jax.nn.log_softmax(model.apply({"params": params}, batch), axis=-1)
    scores = np.asarray(
        log_probs[np.arange(len(batch)), 2, batch[:, 3]]
        + log_probs[np.arange(len(batch)), 3, batch[:, 4]]
    )
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(out.tokens[0], candidates[best])
    np.testing.assert_allclose(out.scores[0], scores[best], rtol=1e-5)


def _sharded_generate(cfg, devices, prompts, **config):
    exp = experiment.assemble_experiment(cfg, devices=devices)
    _, shardings = experiment.state_shardings(exp)
    params = experiment.init_state(exp, shardings).params
    config = decoding.DecodeConfig(**config)
    with partitioning.activate(exp.mesh, exp.rules):
        fn = jax.jit(
            lambda p, x: decoding.generate(exp.model, p, x, config, eos_id=None),
            in_shardings=(shardings.params, exp.batch_sharding),
        )
        return jax.device_get(fn(params, prompts))


@pytest.mark.parametrize("make_config", [tiny_config, tiny_t5_config], ids=["gpt", "t5"])
def test_decoding_on_a_2x2x2_mesh_equals_one_device(make_config):
    """Params and cache sharded by the logical rules decode the same tokens as one device."""
    if make_config is tiny_t5_config:
        rng = np.random.default_rng(0)
        prompts = {
            "encoder_inputs": rng.integers(3, 128, (8, 16)).astype(np.int32),
            "encoder_segment_ids": np.ones((8, 16), np.int32),
        }
    else:
        prompts = decoding.left_pad([[3 + i, 4 + i, 5] for i in range(8)], length=4)
    settings = dict(strategy="beam", num_beams=2, max_new_tokens=5)
    single_cfg = make_config(**{"mesh.data": 1})
    single = _sharded_generate(single_cfg, jax.devices()[:1], prompts, **settings)
    sharded_cfg = make_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    sharded = _sharded_generate(sharded_cfg, jax.devices(), prompts, **settings)
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_allclose(sharded.scores, single.scores, rtol=1e-4)


def test_bad_decode_settings_are_clear_errors():
    with pytest.raises(ValueError, match="strategy='nucleus'"):
        decoding.DecodeConfig(strategy="nucleus")
    with pytest.raises(ValueError, match="top_p=0"):
        decoding.DecodeConfig(top_p=0)
    with pytest.raises(ValueError, match="at least one token"):
        decoding.left_pad([[1, 2], []])


def _called_computations(hlo: str, root: str) -> list[str]:
    """The lines of HLO computation `root` and of every computation it calls, transitively."""
    computations: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if header:
            name = header.group(1)
            computations[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None:
            computations[name].append(line)
    seen, todo, lines = set(), [root], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        lines += computations[name]
        for line in computations[name]:
            todo += [c for c in re.findall(r"%([\w.\-]+)", line) if c in computations]
    return lines


@pytest.mark.parametrize("family", ["decoder_only", "encoder_decoder"])
def test_the_decoding_loop_does_not_transpose_or_copy_the_cache(family):
    """XLA reads the heads-major cache as stored and appends to it in place: no instruction of
    the compiled loop body transposes or copies an array of the KV cache's shape."""
    if family == "decoder_only":
        model, params = _decoder_only(position="rope", num_kv_heads=2)
        prompts = decoding.left_pad(PROMPTS)
        cache_len, heads = prompts["tokens"].shape[1] + 8, 2
    else:
        (model, params), prompts = _t5(), _t5_prompts()
        cache_len, heads = 1 + 8, 4
    config = decoding.DecodeConfig(max_new_tokens=8)
    fn = jax.jit(lambda p, x: decoding.generate(model, p, x, config, eos_id=None).tokens)
    hlo = fn.lower(params, prompts).compile().as_text()
    bodies = re.findall(r"\bwhile\(.*\bbody=%([\w.\-]+)", hlo)
    assert len(bodies) == 1, "expected one decoding loop"
    cache_dims = sorted((len(PROMPTS), cache_len, heads, 32 // 4))
    offending = []
    for line in _called_computations(hlo, bodies[0]):
        op = re.search(r"= \w+\[([\d,]*)\]\S* (transpose|copy)\(", line)
        dims = [int(d) for d in op.group(1).split(",") if d not in ("", "1")] if op else []
        if sorted(dims) == cache_dims:
            offending.append(line.strip()[:160])
    assert not offending, "\n".join(offending)
