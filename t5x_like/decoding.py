"""Autoregressive decoding. For now: greedy decoding of the encoder-decoder model.

The encoder runs once; each step reruns the decoder over the fixed-length buffer of tokens
decoded so far (no KV cache yet: O(max_len^2) decoder work, fine for the short targets of
fine-tuning evaluation). Sequences stop at EOS: every later position holds the pad id 0.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PAD_ID = 0  # Also T5's decoder start token.


def greedy_decode_encoder_decoder(
    model: nn.Module,
    params: Any,
    encoder_inputs: jax.Array,
    encoder_segment_ids: jax.Array,
    *,
    max_len: int,
    eos_id: int,
) -> jax.Array:
    """Greedy output tokens [B, max_len] (EOS included, pads after it) for encoder rows.

    `encoder_segment_ids` is 1 on real tokens and 0 on padding (one example per row). Pure and
    jittable: jit it with the params' shardings to decode on a mesh.
    """
    encoded = model.apply(
        {"params": params}, encoder_inputs, encoder_segment_ids, method="encode"
    )
    batch = encoder_inputs.shape[0]
    # tokens[:, 0] is the start token and tokens[:, i + 1] output i; the decoder reads the first
    # max_len slots, whose causal mask keeps output i from seeing slots after i.
    tokens = jnp.zeros((batch, max_len + 1), jnp.int32)
    decoder_segment_ids = jnp.ones((batch, max_len), jnp.int32)

    def step(i: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        tokens, done = carry
        logits = model.apply(
            {"params": params},
            encoded,
            tokens[:, :max_len],
            encoder_segment_ids,
            decoder_segment_ids,
            method="decode",
        )
        token = jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32)
        token = jnp.where(done, PAD_ID, token)
        return tokens.at[:, i + 1].set(token), done | (token == eos_id)

    done = jnp.zeros((batch,), bool)
    tokens, _ = jax.lax.fori_loop(0, max_len, step, (tokens, done))
    return tokens[:, 1:]
