"""Pure train and eval step functions; the trainer jits them with explicit shardings."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from t5x_like import models
from t5x_like.training import losses
from t5x_like.training.train_state import TrainState

Batch = dict[str, jax.Array]


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rules: Any,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer step on a global batch; the loss is the mean over non-padding tokens."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        # Dropout keys depend on (seed, step) only, so a resumed run draws the same masks.
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits = models.forward(
                model, params, batch, deterministic=False, rngs={"dropout": dropout_rng}
            )
            sums = losses.loss_sums(
                logits, batch["targets"], batch["weights"], z_loss, label_smoothing
            )
            return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums

        with nn.logical_axis_rules(rules):
            (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {**sums, "grad_norm": optax.tree.norm(grads)}

    return train_step


def make_eval_step(
    model: nn.Module, rules: Any, z_loss: float = 0.0
) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Loss sums of the params on one batch (no dropout, no label smoothing)."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        with nn.logical_axis_rules(rules):
            logits = models.forward(model, params, batch)
        return losses.loss_sums(logits, batch["targets"], batch["weights"], z_loss)

    return eval_step
