"""Cross-entropy fused with the LM head, computed in sequence chunks (`train.loss_chunk_size`).

The plain loss (losses.loss_sums) takes logits [B, T, V]: with a large vocabulary those logits,
their softmax and their gradient are the largest arrays of a training step (32000 x 2048 tokens
in float32 is 262 MB each) and autodiff walks them several times. Here the LM head matmul, the
cross-entropy and its gradient run together for `chunk_size` positions of every row at a time
(a `lax.scan`), so only one chunk's logits ever exist.

The gradient is computed in the forward pass (a `jax.custom_vjp`): per chunk, logits = h @ W,
dlogits = w_t * (softmax * (1 + 2 z log Z) - q), with q the (label-smoothed) target
distribution, then dh = dlogits @ W^T and dW += h^T @ dlogits. The backward pass only scales the
saved dh and dW by the loss cotangent, so no matmul is recomputed: 3 matmuls per chunk, as many
as autodiff of the plain loss. Only "loss_sum" carries a gradient; the other sums are metrics
(stop_gradient), as in the train step.

The values equal losses.loss_sums on the logits up to float summation order.

The chunking is a memory technique as much as a speed one, so it lives here with the losses;
its XLA:CPU-specific part, the weight gradient's h^T as a real copy, is
`layers.xla_cpu.weight_grad_lhs` (switch `weight_grad_copy`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.layers import xla_cpu
from t5x_like.models import LMHead
from t5x_like.training import losses


def _logits(x: jax.Array, w: jax.Array, vocab_major: bool) -> jax.Array:
    """x [N, d] -> logits [N, V]."""
    return jnp.einsum("nd,vd->nv" if vocab_major else "nd,dv->nv", x, w)


def _chunk_metrics(logits, targets, weights, z_loss, label_smoothing):
    """Weighted per-chunk sums (the keys of losses.loss_sums but weight_sum) and log Z."""
    total, cross_entropy, z_term = losses.token_cross_entropy(
        logits, targets, z_loss, label_smoothing
    )
    correct = (xla_cpu.first_argmax(logits) == targets).astype(jnp.float32)
    sums = {
        "loss_sum": jnp.sum(total * weights),
        "cross_entropy_sum": jnp.sum(cross_entropy * weights),
        "z_loss_sum": jnp.sum(z_term * weights),
        "correct_sum": jnp.sum(correct * weights),
    }
    return sums, total


def _dlogits(logits, targets, weights, z_loss, label_smoothing):
    """d(sum_t w_t * total_t) / dlogits, in float32: w * (p * (1 + 2 z log Z) - q)."""
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    probs = jnp.exp(logits - log_z)
    if z_loss:
        probs = probs * (1.0 + 2.0 * z_loss * log_z)
    onehot = jnp.arange(vocab, dtype=targets.dtype) == targets[..., None]
    if label_smoothing > 0.0:
        low = label_smoothing / (vocab - 1)
        target_dist = jnp.where(onehot, 1.0 - label_smoothing, low)
    else:
        target_dist = onehot.astype(jnp.float32)
    return (probs - target_dist) * weights[..., None]


def _chunks(x: jax.Array, n: int) -> jax.Array:
    """[B, n*C, ...] -> [n, B, C, ...] (the batch axis keeps its sharding)."""
    b, t = x.shape[:2]
    return x.reshape((b, n, t // n) + x.shape[2:]).swapaxes(0, 1)


def _unchunk(x: jax.Array) -> jax.Array:
    """[n, B, C, ...] -> [B, n*C, ...]."""
    n, b, c = x.shape[:3]
    return x.swapaxes(0, 1).reshape((b, n * c) + x.shape[3:])


def _scan_chunks(hidden, weight, targets, weights, vocab_major, z_loss, ls, n, with_grads):
    """Sums over chunks, per-token totals, and (with_grads) dloss_sum/dhidden, /dweight."""
    xs = (_chunks(hidden, n), _chunks(targets, n), _chunks(weights, n))
    w = weight.astype(hidden.dtype)

    def one_chunk(x, t, wt):
        """A chunk's metric sums and totals [B, C]; with_grads: its dx [B, C, d] and dW^T."""
        shape = t.shape
        # The chunk's B x C positions as the rows of 2-D matmuls (see xla_cpu.matmul_2d).
        x, t, wt = x.reshape(-1, x.shape[-1]), t.reshape(-1), wt.reshape(-1)
        logits = _logits(x, w, vocab_major).astype(jnp.float32)
        sums, total = _chunk_metrics(logits, t, wt, z_loss, ls)
        if not with_grads:
            return sums, total.reshape(shape), None, None
        dlogits = _dlogits(logits, t, wt, z_loss, ls).astype(x.dtype)
        dx = jnp.einsum("nv,vd->nd" if vocab_major else "nv,dv->nd", dlogits, w)
        # The weight gradient is [embed, vocab] whatever the weight's layout: h^T @ dlogits
        # transposes the small h, not the chunk's dlogits (a real copy on XLA:CPU, see
        # xla_cpu.weight_grad_lhs).
        x_t = xla_cpu.weight_grad_lhs(x)
        dw_t = jnp.matmul(x_t, dlogits, preferred_element_type=jnp.float32)
        return sums, total.reshape(shape), dx.reshape(shape + dx.shape[-1:]), dw_t

    def body(carry, chunk):
        sums, dw_t = carry
        chunk_sums, total, dx, chunk_dw_t = one_chunk(*chunk)
        sums = jax.tree.map(jnp.add, sums, chunk_sums)
        return (sums, None if dw_t is None else dw_t + chunk_dw_t), (total, dx)

    # The first chunk starts the sums: no zero-filled [embed, vocab] accumulator to write and
    # read back (~3% of the loss's time at configs/benchmark.py:cpu).
    sums, total, dx, dw_t = one_chunk(*(a[0] for a in xs))
    total, dx = total[None], None if dx is None else dx[None]
    if n > 1:
        (sums, dw_t), (totals, dxs) = jax.lax.scan(body, (sums, dw_t), tuple(a[1:] for a in xs))
        total = jnp.concatenate([total, totals])
        dx = None if dx is None else jnp.concatenate([dx, dxs])
    if not with_grads:
        return sums, _unchunk(total), None, None
    dw = (dw_t.T if vocab_major else dw_t).astype(weight.dtype)
    return sums, _unchunk(total), _unchunk(dx), dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused(hidden, weight, targets, weights, vocab_major, z_loss, label_smoothing, n):
    sums, _, _, _ = _scan_chunks(
        hidden, weight, targets, weights, vocab_major, z_loss, label_smoothing, n, False
    )
    return sums


def _fused_fwd(hidden, weight, targets, weights, vocab_major, z_loss, label_smoothing, n):
    sums, total, dx, dw = _scan_chunks(
        hidden, weight, targets, weights, vocab_major, z_loss, label_smoothing, n, True
    )
    return sums, (dx, dw, total, targets)


def _fused_bwd(vocab_major, z_loss, label_smoothing, n, residuals, cotangents):
    dx, dw, total, targets = residuals
    # Only loss_sum is differentiable (the wrapper stops the metrics' gradients).
    g = cotangents["loss_sum"]
    int_zero = np.zeros(targets.shape, jax.dtypes.float0)
    return (
        (g * dx).astype(dx.dtype),
        (g * dw).astype(dw.dtype),
        int_zero,
        (g * total).astype(jnp.float32),
    )


_fused.defvjp(_fused_fwd, _fused_bwd)


def chunked_loss_sums(
    hidden: jax.Array,
    head: LMHead,
    targets: jax.Array,
    weights: jax.Array,
    chunk_size: int,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> dict[str, jax.Array]:
    """losses.loss_sums of the logits `hidden @ head`, without materialising all logits.

    hidden [B, T, d] (compute dtype, logit scaling applied); targets and weights [B, T];
    `chunk_size` positions of every row per chunk (T is padded with zero-weight positions to a
    multiple of it). Only "loss_sum" is differentiable.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    weights = weights.astype(jnp.float32)
    length = hidden.shape[1]
    chunk_size = min(chunk_size, length)
    n = -(-length // chunk_size)
    pad = n * chunk_size - length
    if pad:
        pad_to = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
        hidden, targets, weights = pad_to(hidden), pad_to(targets), pad_to(weights)
    sums = _fused(
        hidden, head.weight, targets, weights, head.vocab_major, z_loss, label_smoothing, n
    )
    metrics = {k: jax.lax.stop_gradient(v) for k, v in sums.items() if k != "loss_sum"}
    return {"loss_sum": sums["loss_sum"], **metrics, "weight_sum": jnp.sum(weights)}
