"""The guard against non-finite training steps (`train.nan_policy`).

Per-step metrics stay on the device; the trainer hands them to `NanGuard.check` when it fetches
them anyway, at each log interval, and before every checkpoint save, so a non-finite state is
never saved (checking every step would cost a device-to-host sync per step).

- "stop" (default): the first step whose loss or gradient norm is not finite raises
  `NonFiniteError` naming it; the state after it is not saved.
- "skip": `optax.apply_if_finite` (t5x_like/training/optimizers.py) already dropped those
  updates inside the jitted step; the guard names and counts them, and stops the run once more
  than `MAX_CONSECUTIVE_SKIPS` in a row were non-finite (optax then applies the update).
"""

from __future__ import annotations

import math
from typing import Any

from t5x_like.training.optimizers import MAX_CONSECUTIVE_SKIPS


class NonFiniteError(FloatingPointError):
    """A training step produced a NaN or Inf loss or gradient norm."""


def is_finite(metrics: dict[str, Any]) -> bool:
    """Whether every metric of one step (host values) is finite."""
    return all(math.isfinite(float(v)) for v in metrics.values())


def _describe(metrics: dict[str, Any]) -> str:
    loss = float(metrics["loss_sum"]) / max(float(metrics.get("weight_sum", 1.0)), 1.0)
    return f"loss {loss:.4g}, grad_norm {float(metrics['grad_norm']):.4g}"


class NanGuard:
    """Checks each step's host metrics once, in step order, under `policy` ('stop' | 'skip')."""

    def __init__(self, policy: str = "stop", max_consecutive: int = MAX_CONSECUTIVE_SKIPS):
        self.policy = policy
        self.max_consecutive = max_consecutive
        self.checked_through = -1  # Last step already checked.
        self.consecutive: list[int] = []  # Current run of non-finite steps (skip policy).

    def check(self, records: list[tuple[int, dict[str, Any]]], resume_hint: str) -> list[int]:
        """Checks the not-yet-checked `(step, metrics)` records; returns newly skipped steps.

        `resume_hint` ends the error message (where a relaunch resumes from).

        Raises:
          NonFiniteError: 'stop' and a step is not finite, or 'skip' and too many in a row.
        """
        skipped = []
        for step, metrics in records:
            if step <= self.checked_through:
                continue
            self.checked_through = step
            if is_finite(metrics):
                self.consecutive = []
                continue
            if self.policy != "skip":
                raise NonFiniteError(
                    f"Step {step}: non-finite training step ({_describe(metrics)}; "
                    "train.nan_policy='stop'). The state after it was not saved. Lower "
                    "optimizer.learning_rate, raise optimizer.warmup_steps or set "
                    "optimizer.grad_clip_norm (or train with train.nan_policy='skip' in a new "
                    f"workdir), and relaunch: {resume_hint}."
                )
            skipped.append(step)
            self.consecutive.append(step)
            if len(self.consecutive) > self.max_consecutive:
                raise NonFiniteError(
                    f"Steps {self.consecutive[0]}..{step}: {len(self.consecutive)} consecutive "
                    f"non-finite training steps (last: {_describe(metrics)}). "
                    f"train.nan_policy='skip' skips at most {self.max_consecutive} in a row, so "
                    "the last update was applied and the state after it was not saved. Lower "
                    f"optimizer.learning_rate and relaunch: {resume_hint}."
                )
        return skipped
