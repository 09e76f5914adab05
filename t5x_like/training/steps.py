"""Pure train and eval step functions; the trainer jits them with explicit shardings.

The train step may accumulate gradients over micro-batches (`microbatches` > 1): the global
batch is split inside the step, a `lax.scan` sums the unnormalised loss sums, token counts and
gradients of the loss *sums* over the micro-batches, and the summed gradients are divided once by
the whole batch's token count before one optimizer update. The result equals the one-shot step
on the whole batch up to float rounding.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from t5x_like import models
from t5x_like.training import chunked_loss, losses
from t5x_like.training.train_state import TrainState

Batch = dict[str, jax.Array]


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """[B, ...] -> [microbatches, B // microbatches, ...], strided: micro-batch m holds rows
    m, m + microbatches, ...

    Striding (not contiguous chunks) keeps every micro-batch spread over all data-parallel
    shards: a device holding rows [i*k, (i+1)*k) with k a multiple of `microbatches` holds
    k // microbatches rows of each micro-batch, so no data moves between devices.
    """

    def split(x: jax.Array) -> jax.Array:
        b = x.shape[0]
        x = x.reshape((b // microbatches, microbatches) + x.shape[1:]).swapaxes(0, 1)
        axes = (None, "batch") + (None,) * (x.ndim - 2)
        return nn.with_logical_constraint(x, axes)

    return jax.tree.map(split, batch)


def model_loss_sums(
    model: nn.Module,
    params: Any,
    batch: Batch,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    loss_chunk_size: int = 0,
    *,
    deterministic: bool = True,
    rngs: dict[str, jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """losses.loss_sums of the model on a batch; `loss_chunk_size` > 0: the same sums from the
    LM head fused with the loss in chunks of that many positions (no full logits)."""
    targets, weights = batch["targets"], batch["weights"]
    if loss_chunk_size <= 0:
        logits = models.forward(model, params, batch, deterministic=deterministic, rngs=rngs)
        return losses.loss_sums(logits, targets, weights, z_loss, label_smoothing)
    hidden = models.forward(
        model, params, batch, deterministic=deterministic, rngs=rngs, return_hidden=True
    )
    head = models.lm_head(model, params)
    return chunked_loss.chunked_loss_sums(
        hidden, head, targets, weights, loss_chunk_size, z_loss, label_smoothing
    )


def make_loss_and_grads(
    model: nn.Module,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    microbatches: int = 1,
    loss_chunk_size: int = 0,
) -> Callable[[Any, Batch, jax.Array], tuple[dict[str, jax.Array], Any]]:
    """`fn(params, batch, dropout_rng) -> (loss sums, gradients of the mean loss)`.

    The mean is over the batch's non-padding tokens. Must run under the logical axis rules.
    With `microbatches` > 1, micro-batch m uses dropout key fold_in(dropout_rng, m).
    `loss_chunk_size` > 0 fuses the LM head with the loss, that many positions at a time
    (training/chunked_loss.py); 0 computes all logits, then the loss.
    """

    def sums_fn(params: Any, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        return model_loss_sums(
            model,
            params,
            batch,
            z_loss,
            label_smoothing,
            loss_chunk_size,
            deterministic=False,
            rngs={"dropout": rng},
        )

    def one_shot(params: Any, batch: Batch, rng: jax.Array):
        def loss_fn(p):
            sums = sums_fn(p, batch, rng)
            return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums

        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return sums, grads

    def accumulated(params: Any, batch: Batch, rng: jax.Array):
        def loss_sum_fn(p, micro, micro_rng):
            sums = sums_fn(p, micro, micro_rng)
            return sums["loss_sum"], sums

        grad_fn = jax.value_and_grad(loss_sum_fn, has_aux=True)

        def body(carry, xs):
            index, micro = xs
            (_, sums), grads = grad_fn(params, micro, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, carry, (sums, grads)), None

        abstract_sums = jax.eval_shape(
            sums_fn, params, jax.tree.map(lambda x: x[: x.shape[0] // microbatches], batch), rng
        )
        zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_sums)
        zeros = (zero_sums, jax.tree.map(jnp.zeros_like, params))
        xs = (jnp.arange(microbatches), split_microbatches(batch, microbatches))
        (sums, grad_sums), _ = jax.lax.scan(body, zeros, xs)
        # Normalised once by the whole batch's token count, as the one-shot loss is.
        scale = 1.0 / jnp.maximum(sums["weight_sum"], 1.0)
        grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grad_sums)
        return sums, grads

    return one_shot if microbatches == 1 else accumulated


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rules: Any,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    microbatches: int = 1,
    loss_chunk_size: int = 0,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer step on a global batch; the loss is the mean over non-padding tokens.

    `microbatches` > 1 accumulates gradients over that many slices of the batch (see the module
    docstring); the batch size must be a multiple of it. `loss_chunk_size`: see
    `make_loss_and_grads`.
    """
    loss_and_grads = make_loss_and_grads(
        model, z_loss, label_smoothing, microbatches, loss_chunk_size
    )

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        # Dropout keys depend on (seed, step) only, so a resumed run draws the same masks.
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        with nn.logical_axis_rules(rules):
            sums, grads = loss_and_grads(state.params, batch, dropout_rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {**sums, "grad_norm": optax.tree.norm(grads)}

    return train_step


def make_eval_step(
    model: nn.Module, rules: Any, z_loss: float = 0.0, loss_chunk_size: int = 0
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Loss sums of the params on one batch (no dropout, no label smoothing)."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        with nn.logical_axis_rules(rules):
            return model_loss_sums(model, params, batch, z_loss, 0.0, loss_chunk_size)

    return eval_step
