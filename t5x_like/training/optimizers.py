"""Optax optimizers and learning-rate schedules built from the `optimizer` config section."""

from typing import Any

import jax
import optax

from t5x_like.config import NAN_POLICIES


def make_schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to `end_lr_fraction`, rsqrt decay, or constant."""
    peak = opt_cfg.learning_rate
    warmup = opt_cfg.warmup_steps
    if opt_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=total_steps,
            end_value=peak * opt_cfg.end_lr_fraction,
        )
    if opt_cfg.schedule == "rsqrt":
        scale = max(warmup, 1)
        decay = lambda count: peak * jax.lax.rsqrt((count + scale) / scale)
    elif opt_cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"Unknown optimizer.schedule {opt_cfg.schedule!r}.")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: norms' scales and biases are not decayed."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


# nan_policy='skip': this many consecutive non-finite updates are skipped; optax applies the next
# one (its `apply_if_finite` gives up), and the trainer stops the run instead.
MAX_CONSECUTIVE_SKIPS = 10


def make_optimizer(
    opt_cfg: Any, total_steps: int, nan_policy: str = "stop"
) -> tuple[optax.GradientTransformation, Any]:
    """Returns (optimizer, schedule). Gradient clipping by global norm comes first.

    `nan_policy='skip'` wraps the optimizer in `optax.apply_if_finite`: an update whose gradients
    hold a NaN or Inf leaves params and optimizer state unchanged (its inner step count too, so
    the schedule does not advance) and is counted in the state's `total_notfinite`. It adds to
    the optimizer state, so checkpoints of the two policies do not restore into each other.
    """
    schedule = make_schedule(opt_cfg, total_steps)
    name = opt_cfg.name
    if name == "adamw":
        tx = optax.adamw(
            schedule,
            b1=opt_cfg.b1,
            b2=opt_cfg.b2,
            eps=opt_cfg.eps,
            weight_decay=opt_cfg.weight_decay,
            mask=_decay_mask,
        )
    elif name == "adafactor":
        tx = optax.adafactor(
            learning_rate=schedule,
            multiply_by_parameter_scale=False,
            weight_decay_rate=opt_cfg.weight_decay or None,
            weight_decay_mask=_decay_mask,
        )
    elif name == "sgd":
        tx = optax.sgd(schedule)
    else:
        raise ValueError(f"Unknown optimizer.name {name!r}.")
    if opt_cfg.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip_norm), tx)
    if nan_policy == "skip":
        tx = optax.apply_if_finite(tx, max_consecutive_errors=MAX_CONSECUTIVE_SKIPS)
    elif nan_policy != "stop":
        raise ValueError(f"Unknown train.nan_policy {nan_policy!r}; choose one of {NAN_POLICIES}.")
    return tx, schedule


def skipped_updates(opt_state: Any) -> jax.Array | None:
    """The number of non-finite updates skipped so far (nan_policy='skip'), else None."""
    for node in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, optax.ApplyIfFiniteState)
    ):
        if isinstance(node, optax.ApplyIfFiniteState):
            return node.total_notfinite
    return None
