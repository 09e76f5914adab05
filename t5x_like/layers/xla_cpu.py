"""Formulations XLA:CPU runs faster than the plain ones, each next to the plain one it replaces.

Each function here computes what its plain counterpart computes (exactly, or to float summation
order: the equivalence tests are tests/layers/test_xla_cpu.py) in a form XLA's CPU backend
compiles to faster code. On GPU and TPU they cost nothing or next to nothing (said per function).
The layers, the chunked loss and greedy decoding call the dispatching functions, which pick a
formulation by the `Formulations` switches active when the function is *traced*:

    dense layers        trailing_dot            matmul_2d       (plain: dot_general)
    attention core      dot_product_attention   heads_major     (plain: jax.nn's XLA path)
                                                causal_split    (plain: the full square)
    chunked loss        weight_grad_lhs         weight_grad_copy (plain: h^T folded into the dot)
    greedy decoding     argmax                  argmax_reductions (plain: jnp.argmax)

All switches default to on: the default programs are the ones these formulations were measured
in. `using(...)` selects the plain ones, for the equivalence tests and for the benchmark that
shows what each one is worth on the configs/benchmark.py:cpu train step
(tools/benchmarking/formulations.py, `experiments/benchmark.py --mode=formulations`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class Formulations:
    """Which XLA:CPU formulations traced code uses (True) instead of the plain ones (False).

    Attributes:
      matmul_2d: dense layers over trailing axes as one [rows, in] @ [in, out] matmul.
      heads_major: the attention core on heads-major operands with the scale applied to q.
      causal_split: causal self-attention as two query halves that skip the masked quarter.
      weight_grad_copy: the chunked loss's h^T as a real copy (an optimization barrier).
      argmax_reductions: greedy decoding's argmax as a max and a min reduction.
    """

    matmul_2d: bool = True
    heads_major: bool = True
    causal_split: bool = True
    weight_grad_copy: bool = True
    argmax_reductions: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The switches, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    def without(self, *names: str) -> Formulations:
        """These settings with the switches `names` off (the plain formulations)."""
        unknown = set(names) - set(self.names())
        if unknown:
            raise ValueError(f"Unknown formulations {sorted(unknown)}; known: {self.names()}.")
        return dataclasses.replace(self, **{name: False for name in names})


_active = Formulations()


def active() -> Formulations:
    """The switches that code traced now uses."""
    return _active


@contextlib.contextmanager
def using(formulations: Formulations) -> Iterator[None]:
    """Traces inside the block use `formulations`.

    The switches are read at trace time, so JAX's trace and compilation caches are cleared on
    entry and on exit when the switches change: a function traced under the other setting
    would otherwise be reused (compiled objects already held keep their program).
    """
    global _active
    previous = _active
    if formulations != previous:
        jax.clear_caches()
    _active = formulations
    try:
        yield
    finally:
        _active = previous
        if formulations != previous:
            jax.clear_caches()


# --- Dense layers ------------------------------------------------------------------------------


def trailing_dot(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x [..., in...] . kernel [in..., out...] over x's last `n_in` axes (`matmul_2d` picks
    `matmul_2d` or `plain_trailing_dot`)."""
    if _active.matmul_2d:
        return matmul_2d(x, kernel, n_in)
    return plain_trailing_dot(x, kernel, n_in)


def plain_trailing_dot(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """The plain formulation: one dot_general contracting x's last `n_in` axes."""
    contract = tuple(range(x.ndim - n_in, x.ndim))
    return lax.dot_general(x, kernel, ((contract, tuple(range(n_in))), ((), ())))


def matmul_2d(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x [..., in...] . kernel [in..., out...] as one [rows, in] @ [in, out] matmul.

    XLA:CPU runs the backward pass of a dot with several batch-like dims (the weight gradient
    contracts over batch *and* length) through a layout transpose of the activation gradient,
    fused into the elementwise op that produces it; flattened to 2-D, both gradients are plain
    matmuls (1.6x faster for a SwiGLU block's forward + backward on 2 cores). On GPU and TPU
    XLA flattens dots the same way itself, so the reshapes cost nothing there. Exact: the same
    products summed in the same order.
    """
    lead, feat = x.shape[: x.ndim - n_in], kernel.shape[n_in:]
    rows = math.prod(lead)
    y = lax.dot_general(
        x.reshape(rows, -1),
        kernel.reshape(math.prod(kernel.shape[:n_in]), -1),
        (((1,), (0,)), ((), ())),
    )
    return y.reshape(*lead, *feat)


# --- The attention core ------------------------------------------------------------------------

# Below this length the two causal halves cost more in extra ops than the skipped quarter saves.
MIN_CAUSAL_SPLIT = 128


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    bias: jax.Array | None = None,
    scale: float | None = None,
    causal: bool = False,
    softcap: float | None = None,
) -> jax.Array:
    """softmax(scale * q k^T + bias, where mask) v: q [B, T, H, D], k and v [B, S, KH, D] (H a
    multiple of KH), mask [B|1, 1, T, S], bias [B|1, H, T, S]; scale None: 1/sqrt(D).

    `causal`: the mask is also lower-triangular (T == S), which `causal_split` may exploit.
    `softcap`: the scaled logits become softcap * tanh(logits / softcap) before the bias and
    mask (Gemma 2); jax.nn's attention has no such step, so capped attention is always the
    heads-major formulation. `heads_major` picks `heads_major_attention` or `plain_attention`.
    """
    if _active.heads_major or softcap is not None:
        return heads_major_attention(q, k, v, mask, bias, scale, causal, softcap)
    return plain_attention(q, k, v, mask, bias, scale, causal)


def plain_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    bias: jax.Array | None = None,
    scale: float | None = None,
    causal: bool = False,
) -> jax.Array:
    """The plain formulation: `jax.nn.dot_product_attention`'s XLA implementation (its layout
    [B, T, H, D], the scale on the logits, grouped heads always in a 5-D form), in causal
    halves when `causal_split` applies."""

    def attend(q, k, v, mask, bias):
        return jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla"
        )

    if _splits(causal, q.shape[1], k.shape[1]):
        return _causal_halves(attend, q, k, v, mask, bias, axis=1)
    return attend(q, k, v, mask, bias)


def heads_major_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    bias: jax.Array | None = None,
    scale: float | None = None,
    causal: bool = False,
    softcap: float | None = None,
) -> jax.Array:
    """The math of `jax.nn.dot_product_attention`'s XLA implementation (float32 logits and
    softmax, the same fill value for masked logits) written for XLA:CPU, which runs it ~1.4x
    faster with `causal` (forward + backward with RoPE, configs/benchmark.py:cpu shapes: 79 ->
    56 ms per layer):
    - heads-major operands [B, H, T, D], so the batched dots need no layout changes inside;
    - the scale applied to q (T x D values) rather than to the T x S logits (in the compute
      dtype, as MaxText does: exact for power-of-two head dims);
    - 4-D logits when there are as many KV heads as query heads (jax.nn always vmaps a 5-D
      grouped form); grouped KV heads keep the grouped form;
    - with `causal_split`, see `_causal_halves`.
    Equal to `plain_attention` to float rounding. GPU and TPU pick their own dot layouts, so
    the transposes here are what XLA would insert there anyway.
    """
    t, d, s = q.shape[1], q.shape[3], k.shape[1]
    scale = d**-0.5 if scale is None else scale
    q = jnp.swapaxes(q, 1, 2)
    if scale != 1.0:
        q = q * jnp.asarray(scale, q.dtype)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    attend = functools.partial(_attend, softcap=softcap)
    if _splits(causal, t, s):
        out = _causal_halves(attend, q, k, v, mask, bias, axis=2)
    else:
        out = attend(q, k, v, mask, bias)
    return jnp.swapaxes(out, 1, 2)


def _splits(causal: bool, t: int, s: int) -> bool:
    """Whether the causal halves apply: switched on, a causal square of even length, long
    enough to pay."""
    return _active.causal_split and causal and t == s and t % 2 == 0 and t >= MIN_CAUSAL_SPLIT


def _causal_halves(
    attend: Callable[..., jax.Array],
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    bias: jax.Array | None,
    axis: int,
) -> jax.Array:
    """Causal attention as two halves of the queries (`axis` the length axis of q, k, v): the
    first half attends only to the first half of the keys, the second to all of them, so the
    masked upper-right quarter of the logits is never computed. Exact for every query that may
    attend to some key (the skipped logits are masked out); a fully masked query (padding, whose
    output carries no weight) averages the values of the first half instead of all. It pays on
    any backend, but only XLA:CPU lacks a fused causal kernel that does it."""
    half = q.shape[axis] // 2
    first = lambda x: lax.slice_in_dim(x, 0, half, axis=axis)  # noqa: E731
    second = lambda x: lax.slice_in_dim(x, half, x.shape[axis], axis=axis)  # noqa: E731
    halves = [
        attend(
            first(q),
            first(k),
            first(v),
            mask[..., :half, :half],
            None if bias is None else bias[..., :half, :half],
        ),
        attend(
            second(q),
            k,
            v,
            mask[..., half:, :],
            None if bias is None else bias[..., half:, :],
        ),
    ]
    return jnp.concatenate(halves, axis=axis)


def _attend(q, k, v, mask, bias, softcap=None):
    """The attention of heads-major, pre-scaled q [B, H, T, D] over k, v [B, KH, S, D]."""
    b, heads, t, d = q.shape
    kv_heads, s = k.shape[1], k.shape[2]
    f32 = jnp.float32
    if kv_heads == heads:
        logits = jnp.einsum("bntd,bnsd->bnts", q, k, preferred_element_type=f32)
    else:
        q = q.reshape(b, kv_heads, heads // kv_heads, t, d)
        logits = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=f32)
        logits = logits.reshape(b, heads, t, s)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    if bias is not None:
        logits = logits + bias.astype(f32)
    logits = jnp.where(mask, logits, jnp.asarray(-0.7 * jnp.finfo(f32).max, f32))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if kv_heads == heads:
        return jnp.einsum("bnts,bnsd->bntd", probs, v)
    probs = probs.reshape(b, kv_heads, heads // kv_heads, t, s)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, v).reshape(b, heads, t, d)


# --- The chunked loss's weight gradient --------------------------------------------------------


def weight_grad_lhs(x: jax.Array) -> jax.Array:
    """x [N, d] -> x^T [d, N], the left operand of the weight gradient x^T @ dlogits.

    With `weight_grad_copy` the transpose is a real copy (an optimization barrier): folded into
    the dot (contracting both operands' major axis), XLA:CPU runs it on its generic matmul,
    25% slower at [512, 512] x [512, 32000], ~2.5% of the configs/benchmark.py:cpu step. Exact
    (the same dot); elsewhere it costs one small [d, N] copy per loss chunk.
    """
    if _active.weight_grad_copy:
        return lax.optimization_barrier(x.T)
    return x.T


# --- Greedy decoding's argmax ------------------------------------------------------------------


def argmax(logits: jax.Array) -> jax.Array:
    """`jnp.argmax` over the last axis, int32 (`argmax_reductions` picks `argmax_by_reductions`
    or `jnp.argmax`)."""
    if _active.argmax_reductions:
        return argmax_by_reductions(logits)
    return jnp.argmax(logits, axis=-1)


def argmax_by_reductions(logits: jax.Array) -> jax.Array:
    """`jnp.argmax` over the last axis (the first maximum; the first NaN if any) as two plain
    reductions: XLA's CPU backend runs argmax's (value, index) reduce unvectorised, ~4% of a
    decoding step at vocabulary 32k. Exact; elsewhere it reads the logits twice instead of
    once."""
    hit = (logits == jnp.max(logits, axis=-1, keepdims=True)) | jnp.isnan(logits)
    index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(hit, index, logits.shape[-1]), axis=-1)


# Float32 holds every integer up to 2**24 exactly: vocabularies up to that size can use float
# indices in `first_argmax`.
_FLOAT_INDEX_LIMIT = 2**24


def first_argmax(x: jax.Array) -> jax.Array:
    """jnp.argmax over the last axis (the first index of the maximum) of a float array.

    Computed as min(where(x == max(x), index, V)) with float32 indices: XLA:CPU runs a max and a
    float min reduction several times faster than argmax's variadic (value, index) reduction,
    and the max is the one logsumexp computes anyway (the token accuracy of the loss; decoding
    uses `argmax`, which also handles NaN like jnp.argmax). Always on: it is exact for finite
    logits and costs nothing elsewhere. A row holding a NaN gives V (no index)
    where jnp.argmax gives the NaN's index.
    """
    vocab = x.shape[-1]
    if vocab >= _FLOAT_INDEX_LIMIT:
        return jnp.argmax(x, axis=-1)
    top = jnp.max(x, axis=-1, keepdims=True)
    index = lax.broadcasted_iota(jnp.float32, x.shape, x.ndim - 1)
    first = jnp.min(jnp.where(x == top, index, float(vocab)), axis=-1)
    return first.astype(jnp.int32)
