"""Pure train and eval step functions at module level; the experiment jits each once, with its
shardings and its `LossConfig` as a static argument.

    loss_cfg = LossConfig(module, tx, rules, z_loss=1e-4)
    train = jax.jit(train_step, static_argnums=2, donate_argnums=0, in_shardings=...)
    state, metrics = train(state, batch, loss_cfg)

The dropout RNG stays in the state (`TrainState.rng`): each step folds in the step number, so a
resumed run draws the same masks and the step needs no key argument.

The train step may accumulate gradients over micro-batches (`microbatches` > 1): the global
batch is split inside the step, a `lax.scan` sums the unnormalised loss sums, token counts and
gradients of the loss *sums* over the micro-batches, and the summed gradients are divided once by
the whole batch's token count before one optimizer update. The result equals the one-shot step
on the whole batch up to float rounding.
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from t5x_like import models
from t5x_like.training import chunked_loss, losses
from t5x_like.training.train_state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What the step functions need besides their arrays: static and hashable (a jit key).

    Attributes:
      module: the model's Flax module (its family adapter is found from it).
      tx: the optimizer (unused by `eval_step`).
      rules: the logical axis rules the step runs under.
      z_loss, label_smoothing: see losses.loss_sums (evaluation uses no label smoothing).
      microbatches: gradient accumulation over that many slices of the batch (see above); the
        batch size must be a multiple of it.
      loss_chunk_size: > 0 fuses the LM head with the loss, that many positions at a time
        (training/chunked_loss.py); 0 computes all logits, then the loss.
    """

    module: nn.Module
    tx: optax.GradientTransformation | None = None
    rules: Any = ()
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    microbatches: int = 1
    loss_chunk_size: int = 0


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
    LM head fused with the loss in chunks of that many positions (no full logits). The family's
    sentence-level heads (`apply_with_aux`) add their losses (losses.sentence_loss_sums)."""
    family = models.family_of(model)
    targets, weights = family.loss_targets(batch)
    chunked = loss_chunk_size > 0
    out, aux = family.apply_with_aux(
        model, params, batch, deterministic=deterministic, rngs=rngs, return_hidden=chunked
    )
    if chunked:
        head = family.lm_head(model, params)
        sums = chunked_loss.chunked_loss_sums(
            out, head, targets, weights, loss_chunk_size, z_loss, label_smoothing
        )
    else:
        sums = losses.loss_sums(out, targets, weights, z_loss, label_smoothing)
    # Sentence-level heads (e.g. next-sentence prediction) add their loss to the token loss.
    for name, (logits, labels) in aux.items():
        rows = jnp.max(batch[family.segment_ids_key], axis=-1) > 0  # Not a padding row.
        share, metrics = losses.sentence_loss_sums(name, logits, labels, rows, weights)
        sums = {**sums, **metrics, "loss_sum": sums["loss_sum"] + share}
    return sums


def _dropout_sums(params: Any, batch: Batch, rng: jax.Array, loss_cfg: LossConfig) -> Batch:
    """Training loss sums: dropout on (key `rng`), label smoothing."""
    return model_loss_sums(
        loss_cfg.module,
        params,
        batch,
        loss_cfg.z_loss,
        loss_cfg.label_smoothing,
        loss_cfg.loss_chunk_size,
        deterministic=False,
        rngs={"dropout": rng},
    )


def _mean_loss(
    params: Any, batch: Batch, rng: jax.Array, loss_cfg: LossConfig
) -> tuple[jax.Array, Batch]:
    sums = _dropout_sums(params, batch, rng, loss_cfg)
    return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums


def _summed_loss(
    params: Any, batch: Batch, rng: jax.Array, loss_cfg: LossConfig
) -> tuple[jax.Array, Batch]:
    sums = _dropout_sums(params, batch, rng, loss_cfg)
    return sums["loss_sum"], sums


def _accumulate(
    params: Any, rng: jax.Array, loss_cfg: LossConfig, carry: tuple[Batch, Any], xs: Any
) -> tuple[tuple[Batch, Any], None]:
    """One micro-batch of the scan (xs: its index and rows): its loss sums and gradients
    added to the carry."""
    index, micro = xs
    grad_fn = jax.value_and_grad(_summed_loss, has_aux=True)
    (_, sums), grads = grad_fn(params, micro, jax.random.fold_in(rng, index), loss_cfg)
    return jax.tree.map(jnp.add, carry, (sums, grads)), None


def _accumulated_loss_and_grads(
    params: Any, batch: Batch, rng: jax.Array, loss_cfg: LossConfig
) -> tuple[Batch, Any]:
    """`loss_and_grads` summed over `loss_cfg.microbatches` slices of the batch (a scan)."""
    microbatches = loss_cfg.microbatches
    abstract_sums = jax.eval_shape(
        functools.partial(_dropout_sums, loss_cfg=loss_cfg),
        params,
        jax.tree.map(lambda x: x[: x.shape[0] // microbatches], batch),
        rng,
    )
    zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_sums)
    zeros = (zero_sums, jax.tree.map(jnp.zeros_like, params))
    xs = (jnp.arange(microbatches), split_microbatches(batch, microbatches))
    body = functools.partial(_accumulate, params, rng, loss_cfg)
    (sums, grad_sums), _ = jax.lax.scan(body, zeros, xs)
    # Normalised once by the whole batch's token count, as the one-shot loss is.
    scale = 1.0 / jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grad_sums)
    return sums, grads


def loss_and_grads(
    params: Any, batch: Batch, dropout_rng: jax.Array, loss_cfg: LossConfig
) -> tuple[Batch, Any]:
    """(loss sums, gradients of the mean loss) of `params` on `batch`.

    The mean is over the batch's non-padding tokens. Must run under the logical axis rules.
    With `loss_cfg.microbatches` > 1, micro-batch m uses dropout key fold_in(dropout_rng, m).
    """
    if loss_cfg.microbatches > 1:
        return _accumulated_loss_and_grads(params, batch, dropout_rng, loss_cfg)
    grad_fn = jax.value_and_grad(_mean_loss, has_aux=True)
    (_, sums), grads = grad_fn(params, batch, dropout_rng, loss_cfg)
    return sums, grads


def train_step(
    state: TrainState, batch: Batch, loss_cfg: LossConfig
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch; the loss is the mean over non-padding tokens."""
    # Dropout keys depend on (seed, step) only, so a resumed run draws the same masks.
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    with nn.logical_axis_rules(loss_cfg.rules):
        sums, grads = loss_and_grads(state.params, batch, dropout_rng, loss_cfg)
    updates, opt_state = loss_cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {**sums, "grad_norm": optax.tree.norm(grads)}


def eval_step(params: Any, batch: Batch, loss_cfg: LossConfig) -> dict[str, jax.Array]:
    """Loss sums of the params on one batch (no dropout, no label smoothing)."""
    with nn.logical_axis_rules(loss_cfg.rules):
        return model_loss_sums(
            loss_cfg.module, params, batch, loss_cfg.z_loss, 0.0, loss_cfg.loss_chunk_size
        )
