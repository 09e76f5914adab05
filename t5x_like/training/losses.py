"""Cross-entropy with z-loss and label smoothing, as sums over non-padding tokens.

Losses are returned as sums together with the token count so that averages over several batches,
devices or processes are exact (the mean is taken once, at the end).
"""

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.layers import xla_cpu


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, z_loss: float = 0.0, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (total loss, cross-entropy, z-loss term), computed in float32.

    With label smoothing the target distribution puts `1 - label_smoothing` on the label and
    spreads the rest uniformly; the entropy of that distribution is subtracted so a perfect model
    scores 0. The z-loss `z_loss * log(Z)^2` keeps the softmax normaliser near 1 (PaLM, T5X).
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        min_entropy = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low))
        other = jnp.sum(log_probs, axis=-1) - target_log_prob
        cross_entropy = -(confidence * target_log_prob + low * other) - min_entropy
    else:
        cross_entropy = -target_log_prob
    z_term = z_loss * jnp.square(log_z)
    return cross_entropy + z_term, cross_entropy, z_term


def loss_sums(
    logits: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
) -> dict[str, jax.Array]:
    """Weighted sums of loss, cross-entropy, z-loss and correct predictions, and the weight sum."""
    total, cross_entropy, z_term = token_cross_entropy(logits, targets, z_loss, label_smoothing)
    weights = weights.astype(jnp.float32)
    correct = (xla_cpu.first_argmax(logits) == targets).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(total * weights),
        "cross_entropy_sum": jnp.sum(cross_entropy * weights),
        "z_loss_sum": jnp.sum(z_term * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }


def sentence_loss_sums(
    name: str,
    logits: jax.Array,
    labels: jax.Array,
    rows: jax.Array,
    token_weights: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A sentence-level head's loss (e.g. BERT's next-sentence prediction) on logits [B, C].

    Returns (its share of the training `loss_sum`, its metric sums). The share weights each
    row's cross-entropy by the row's token weights [B, L] (its masked tokens), so that
    `loss_sum / weight_sum` is the token loss plus the head's loss averaged over the same
    tokens: a sum like the token loss's, hence exact over micro-batches, devices and processes.
    The metrics count `rows` [B] (1 for a real row, 0 for padding): `<name>_loss_sum`,
    `<name>_correct_sum`, `<name>_rows` (`summarize` makes `<name>_loss`, `<name>_accuracy`).
    """
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    labels = labels.astype(jnp.int32)
    cross_entropy = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    rows = rows.astype(jnp.float32)
    correct = (xla_cpu.first_argmax(logits) == labels).astype(jnp.float32)
    share = jnp.sum(cross_entropy * jnp.sum(token_weights.astype(jnp.float32), axis=-1))
    return share, {
        f"{name}_loss_sum": jnp.sum(cross_entropy * rows),
        f"{name}_correct_sum": jnp.sum(correct * rows),
        f"{name}_rows": jnp.sum(rows),
    }


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Turns accumulated sums into means: loss, cross_entropy, z_loss, accuracy, perplexity;
    and `<name>_loss`, `<name>_accuracy` (fractions) of each sentence-level head."""
    n = max(float(sums["weight_sum"]), 1.0)
    cross_entropy = float(sums["cross_entropy_sum"]) / n
    out = {
        "loss": float(sums["loss_sum"]) / n,
        "cross_entropy": cross_entropy,
        "z_loss": float(sums["z_loss_sum"]) / n,
        "accuracy": float(sums["correct_sum"]) / n,
        "perplexity": float(np.exp(min(cross_entropy, 50.0))),
        "tokens": float(sums["weight_sum"]),
    }
    for key in sums:
        if key.endswith("_rows"):
            name, rows = key[: -len("_rows")], max(float(sums[key]), 1.0)
            out[f"{name}_loss"] = float(sums[f"{name}_loss_sum"]) / rows
            out[f"{name}_accuracy"] = float(sums[f"{name}_correct_sum"]) / rows
    return out
