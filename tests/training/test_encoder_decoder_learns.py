"""The whole encoder-decoder loop learns: a tiny T5 v1.1 reaches >= 95% exact match (greedy
decoding) on reversing random token sequences."""

import jax
import numpy as np
from testutil import tiny_t5_config

from t5x_like import decoding, partitioning
from t5x_like.experiment import assembly as experiment

LENGTH = 12  # Encoder and decoder row length: up to 8 tokens plus EOS.
VOCAB = 32
EOS = 1


def _reverse_batch(rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """Rows of 3..8 random tokens (ids 3..31) + EOS; the target is the reversal + EOS."""
    encoder = np.zeros((batch_size, LENGTH), np.int32)
    targets = np.zeros((batch_size, LENGTH), np.int32)
    for row in range(batch_size):
        tokens = rng.integers(3, VOCAB, rng.integers(3, 9))
        encoder[row, : len(tokens) + 1] = [*tokens, EOS]
        targets[row, : len(tokens) + 1] = [*tokens[::-1], EOS]
    decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    enc_seg = (encoder > 0).astype(np.int32)
    dec_seg = (targets > 0).astype(np.int32)
    positions = np.arange(LENGTH, dtype=np.int32)[None]
    return {
        "encoder_inputs": encoder,
        "encoder_segment_ids": enc_seg,
        "encoder_positions": positions * enc_seg,
        "decoder_inputs": decoder_inputs * dec_seg,
        "decoder_segment_ids": dec_seg,
        "decoder_positions": positions * dec_seg,
        "targets": targets,
        "weights": dec_seg.astype(np.float32),
    }


def test_tiny_t5_learns_to_reverse_sequences():
    steps = 1000
    cfg = tiny_t5_config(
        **{
            "model.vocab_size": VOCAB,
            "model.d_model": 64,
            "model.head_dim": 16,
            "model.mlp_dim": 128,
            "data.inputs_len": LENGTH,
            "data.targets_len": LENGTH,
            "train.batch_size": 32,
            "train.steps": steps,
            "optimizer.learning_rate": 3e-3,
            "optimizer.warmup_steps": 20,
            "optimizer.weight_decay": 0.0,
            "mesh.data": 1,
        }
    )
    exp = experiment.assemble_experiment(cfg, devices=jax.devices()[:1])
    _, shardings = experiment.state_shardings(exp)
    state = experiment.init_state(exp, shardings)
    train_step, _ = experiment.jit_steps(exp, shardings)
    rng = np.random.default_rng(0)
    with partitioning.activate(exp.mesh, exp.rules):
        for _ in range(steps):
            batch = partitioning.global_batch(_reverse_batch(rng, 32), exp.batch_sharding)
            state, metrics = train_step(state, batch)
    assert float(metrics["loss_sum"] / metrics["weight_sum"]) < 0.1

    held_out = _reverse_batch(np.random.default_rng(123), 256)  # Other sequences than training.
    config = decoding.DecodeConfig(strategy="greedy", max_new_tokens=LENGTH)
    decode = jax.jit(
        lambda params, prompts: decoding.generate(exp.model, params, prompts, config, eos_id=EOS)
    )
    prompts = {k: held_out[k] for k in ("encoder_inputs", "encoder_segment_ids")}
    outputs = np.asarray(decode(state.params, prompts).tokens)
    pairs = zip(outputs, held_out["targets"], strict=True)
    exact = np.mean([np.array_equal(out, target) for out, target in pairs])
    print(f"reverse task: exact match {exact:.1%} after {steps} steps")
    assert exact >= 0.95
