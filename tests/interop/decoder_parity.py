"""Shared helpers of the decoder-only HF parity tests (GPT-2, LLaMA): batches, our jitted forward,
greedy decoding both ways, random params, and the comparisons.

Imported by the tests as `interop.decoder_parity` (`tests/` is on the path); not a test module.
"""

import contextlib
import functools
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from t5x_like import decoding
from t5x_like.interop import common
from t5x_like.layers.config import TransformerConfig
from t5x_like.models.decoder_only import DecoderOnlyTransformer

TOLERANCE = 1e-4
PROMPT_LENGTHS = (8, 5, 3)  # rows 1 and 2 are left-padded, as HF generation wants
NEW_TOKENS = 20
# Rows 1 and 2 are right-padded. The length equals that of the generation buffer, so one
# compilation of our forward serves both.
LENGTHS = (max(PROMPT_LENGTHS) + NEW_TOKENS, 19, 7)
PAD_ID = 0  # Prompts use ids >= 2, so no real token is a pad.


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Runs torch on one thread meanwhile: on these tiny models a second thread buys nothing, and
    on a busy 2-core machine its spin-waiting next to XLA's threads made HF's generate ~20x
    slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def batch(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded token ids and their HF attention mask (1 real, 0 pad): for unpacked rows,
    exactly our segment ids."""
    rng = np.random.default_rng(0)
    length = max(LENGTHS)
    mask = (np.arange(length)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
    ids = rng.integers(2, vocab, (len(LENGTHS), length)) * mask
    return ids.astype(np.int32), mask


def prompts(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids and their attention mask."""
    rng = np.random.default_rng(1)
    length = max(PROMPT_LENGTHS)
    mask = (np.arange(length)[None] >= length - np.array(PROMPT_LENGTHS)[:, None]).astype(np.int32)
    ids = rng.integers(2, vocab, (len(PROMPT_LENGTHS), length)) * mask
    return ids.astype(np.int32), mask


@functools.cache
def jitted_forward(config: TransformerConfig):
    model = DecoderOnlyTransformer(config)

    @jax.jit
    def forward(params, tokens, segment_ids, positions):
        return model.apply({"params": params}, tokens, segment_ids=segment_ids, positions=positions)

    return forward


def our_logits(params, config: TransformerConfig) -> np.ndarray:
    ids, mask = batch(config.vocab_size)
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    return np.asarray(jitted_forward(config)(nn.meta.unbox(params), ids, mask, positions))


def hf_logits(hf_model) -> np.ndarray:
    ids, mask = (torch.from_numpy(x).long() for x in batch(hf_model.config.vocab_size))
    with torch.no_grad():
        return hf_model(input_ids=ids, attention_mask=mask).logits.numpy()


def assert_logits_parity(ours: np.ndarray, hf: np.ndarray, label: str) -> None:
    """Max |difference| of logits at real (non-pad) positions within TOLERANCE."""
    real = batch(ours.shape[-1])[1].astype(bool)
    assert np.isfinite(ours[real]).all()
    diff = float(np.abs(ours[real] - hf[real]).max())
    print(f"\n{label}: max|logits diff| {diff:.2e} (logits max|x| {np.abs(hf[real]).max():.1f})")
    assert diff <= TOLERANCE


def hf_greedy(hf_model) -> np.ndarray:
    """HF's greedy continuation [B, NEW_TOKENS] of the left-padded prompts."""
    ids, mask = (torch.from_numpy(x).long() for x in prompts(hf_model.config.vocab_size))
    with torch.no_grad():
        out = hf_model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=PAD_ID,
            eos_token_id=None,  # exactly NEW_TOKENS tokens per row
        )
    return out[:, ids.shape[1] :].numpy()


def our_greedy(params, config: TransformerConfig) -> np.ndarray:
    """Our greedy continuation of the same prompts: a plain loop of full forward passes (no
    cache), each taking the argmax at the last filled position and appending it.

    The rows live in one fixed-size buffer so that a single compilation serves every step; by
    causality the empty slots after the last filled position cannot change its logits. Left pads
    get segment 0 (never attended to) and, like HF, positions count real tokens from 0.
    """
    ids, mask = prompts(config.vocab_size)
    rows, length = ids.shape
    tokens = np.concatenate([ids, np.zeros((rows, NEW_TOKENS), np.int32)], axis=1)
    segment_ids = np.concatenate([mask, np.ones((rows, NEW_TOKENS), np.int32)], axis=1)
    positions = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
    forward, params = jitted_forward(config), nn.meta.unbox(params)
    for i in range(NEW_TOKENS):
        logits = forward(params, tokens, segment_ids, positions)
        tokens[:, length + i] = np.asarray(jnp.argmax(logits[:, length + i - 1], axis=-1))
    return tokens[:, length:]


@functools.cache
def _jitted_cached_greedy(config: TransformerConfig):
    model = DecoderOnlyTransformer(config)
    decode_config = decoding.DecodeConfig(strategy="greedy", max_new_tokens=NEW_TOKENS)

    @jax.jit
    def generate(params, prompts):
        return decoding.generate(model, params, prompts, decode_config, eos_id=None).tokens

    return generate


def our_cached_greedy(params, config: TransformerConfig) -> np.ndarray:
    """Greedy continuation of the same prompts by `t5x_like.decoding.generate` (KV cache)."""
    ids, mask = prompts(config.vocab_size)
    generate = _jitted_cached_greedy(config)
    return np.asarray(generate(nn.meta.unbox(params), {"tokens": ids, "segment_ids": mask}))


def random_params(config: TransformerConfig, seed: int = 1):
    """Random params in our (logically boxed) tree, at init-like scales, biases and norm
    parameters included, so that a swapped or mis-transposed tensor cannot hide.

    Drawn with numpy into the boxes of an abstract `init`: compiling the model's real
    initialisers costs seconds on a small CPU, and the values are all these tests need.
    """
    rng = np.random.default_rng(seed)
    model = DecoderOnlyTransformer(config)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]

    def draw(path, leaf):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        if names[-1] == "scale":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if names[-1] in ("bias", "embedding"):
            std = 0.1 if names[-1] == "bias" else 0.5
        else:
            fan_in = leaf.shape[0] * (leaf.shape[1] if names[-2] == "out" else 1)
            std = fan_in**-0.5
        return (rng.standard_normal(leaf.shape) * std).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def randomise_hf_norms_and_biases(hf_model) -> None:
    """Norm scales around 1 and small random biases (HF initialises them to 1 and 0)."""
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if param.ndim == 1 and name.endswith("weight"):  # a norm's scale
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)


def assert_trees_equal(a, b) -> None:
    flat_a, flat_b = common.flatten_params(a), common.flatten_params(b)
    assert flat_a.keys() == flat_b.keys()
    for path, x in flat_a.items():
        np.testing.assert_array_equal(x, flat_b[path], err_msg="/".join(path))


def assert_state_dicts_equal(exported: dict, reference: dict) -> None:
    """Same keys in the same order, float32, bit-identical values."""
    assert list(exported) == list(reference)
    for key, value in reference.items():
        assert exported[key].dtype == np.float32, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def write_bpe_tokenizer(directory, texts, specials, bos: str, eos: str, pad: str | None = None):
    """A byte-level BPE `tokenizer.json` trained on `texts` (`specials` first, ids 0..) and a
    tokenizer_config.json naming its BOS / EOS (/ pad) tokens, written into `directory`; returns
    the `tokenizers.Tokenizer`."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(directory / "tokenizer.json"))
    names = {"bos_token": bos, "eos_token": eos, **({"pad_token": pad} if pad else {})}
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **names})
    )
    return tok
