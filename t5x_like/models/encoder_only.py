"""Encoder-only Transformer (BERT / RoBERTa family) and its family adapter (`EncoderOnly`).

Token + learned absolute position + token-type embeddings, summed and LayerNorm'd; the shared
`TransformerStack` run bidirectionally (post-LN as in BERT, pre-LN as an option); then the heads
of `model.encoder_head`:

    mlm                    the tied masked-LM head (layers/heads.MlmHead)
    pretraining            mlm + next-sentence (or sentence-order) prediction on the pooler
    classification         pooler + num_labels logits per row
    token_classification   num_labels logits per token
    question_answering     start / end logits per token

The family pretrains with the `mlm` task (data/mlm.py): the loss is the LM loss on the masked
positions (`targets`, `weights`) plus, with the NSP head, the sentence-pair loss on `nsp_label`
(`apply_with_aux`). The fine-tuning heads train on their tasks' rows with the same token loss
(`loss_targets`). It does not generate text: the decoding hooks refuse with one line.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.errors import ConfigError
from t5x_like.layers.attention import default_segments_and_positions, make_attention_mask
from t5x_like.layers.config import TransformerConfig
from t5x_like.layers.embeddings import LearnedPositions
from t5x_like.layers.heads import INIT_STD, Classifier, MlmHead, Pooler
from t5x_like.layers.initializers import logical_init
from t5x_like.layers.norms import make_norm
from t5x_like.layers.transformer import TransformerStack
from t5x_like.models.base import Batch, LMHead, ModelFamily, matmul_params

HEADS = ("mlm", "pretraining", "classification", "token_classification", "question_answering")
# Heads on the pooled first token (BERT's pooler exists only for them, as in transformers).
POOLED_HEADS = ("pretraining", "classification")
MLM_HEADS = ("mlm", "pretraining")
# The data.task each head trains on (data/mlm.py; the fine-tuning rows of data/finetune.py).
HEAD_TASKS = {
    "mlm": "mlm",
    "pretraining": "mlm",
    "classification": "classification",
    "token_classification": "token_classification",
    "question_answering": "question_answering",
}
NO_DECODING = (
    "model.family='encoder_only' does not generate text (a bidirectional encoder has no "
    "decoding step); use a decoder_only or encoder_decoder model to decode."
)


class EncoderOnlyTransformer(nn.Module):
    """Maps tokens [B, L] (plus token types, segment ids, positions) to the heads' outputs.

    Packed rows carry `segment_ids` (1..k per example, 0 for padding) and `positions`
    (restarting at 0 for each example); attention never crosses examples.

    Attributes:
      config: the shared stack's hyperparameters.
      type_vocab_size: rows of the token-type table (BERT 2; 0: no token types).
      head: one of HEADS.
      num_labels: outputs of the classification / token-classification heads.
    """

    config: TransformerConfig
    type_vocab_size: int = 2
    head: str = "mlm"
    num_labels: int = 2

    def _embed(self, tokens, token_type_ids, positions, deterministic):
        cfg = self.config
        table = self.param(
            "embedding",
            logical_init(nn.initializers.normal(stddev=INIT_STD), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model),
            cfg.weight_dtype,
        )
        table = jnp.asarray(table, cfg.compute_dtype)
        x = jnp.take(table, tokens, axis=0)
        x = x + LearnedPositions(cfg, name="position_embed")(positions)
        if self.type_vocab_size:
            types = self.param(
                "token_type_embedding",
                logical_init(nn.initializers.normal(stddev=INIT_STD), ("token_types", "embed")),
                (self.type_vocab_size, cfg.d_model),
                cfg.weight_dtype,
            )
            x = x + jnp.take(jnp.asarray(types, cfg.compute_dtype), token_type_ids, axis=0)
        x = make_norm(cfg, "embed_norm")(x)
        x = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), table

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        token_type_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        return_hidden: bool = False,
    ) -> dict[str, jax.Array]:
        """The head's outputs: `mlm_logits` [B, L, vocab] (or, with `return_hidden`,
        `mlm_hidden` [B, L, embed], the tied decoder's input), `nsp_logits` [B, 2], `logits`
        ([B, num_labels] or [B, L, num_labels]), `start_logits` / `end_logits` [B, L]."""
        cfg = self.config
        segment_ids, positions = default_segments_and_positions(tokens, segment_ids, positions)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(tokens)
        x, table = self._embed(tokens, token_type_ids, positions, deterministic)
        mask = make_attention_mask(segment_ids, segment_ids, causal=False)
        x = TransformerStack(cfg, causal=False, name="encoder")(x, mask, positions, deterministic)

        out: dict[str, jax.Array] = {}
        if self.head in MLM_HEADS:
            h = MlmHead(cfg, name="mlm_head")(x, table, return_hidden=return_hidden)
            out["mlm_hidden" if return_hidden else "mlm_logits"] = h
        if self.head in POOLED_HEADS:
            pooled = Pooler(cfg, name="pooler")(x)
            if self.head == "pretraining":
                out["nsp_logits"] = Classifier(cfg, 2, name="nsp")(pooled)
            else:
                pooled = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
                out["logits"] = Classifier(cfg, self.num_labels, name="classifier")(pooled)
        elif self.head == "token_classification":
            h = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
            out["logits"] = Classifier(cfg, self.num_labels, name="classifier")(h)
        elif self.head == "question_answering":
            start_end = Classifier(cfg, 2, name="qa_outputs")(x)
            out["start_logits"], out["end_logits"] = start_end[..., 0], start_end[..., 1]
        return out


class EncoderOnly(ModelFamily):
    """The encoder-only family: rows of `inputs` with `token_type_ids`, `segment_ids`,
    `positions` and `weights`, and the head's targets: masked-LM `targets` (+ `nsp_label` with
    the pretraining head), a classification `label`, tagging `targets`, or QA
    `start_positions` / `end_positions`."""

    name = "encoder_only"
    module_class = EncoderOnlyTransformer
    features = ("inputs", "token_type_ids", "segment_ids", "positions", "weights")
    # Each head's targets (see `loss_targets`) and the NSP labels of sentence pairs.
    optional_features = ("targets", "nsp_label", "label", "start_positions", "end_positions")
    segment_ids_key = "segment_ids"
    prompt_keys = ("inputs", "segment_ids")
    supports_decoded_metrics = False
    generates_text = False
    hf_model_types = ("bert", "roberta")

    def build(self, model_cfg: Any) -> nn.Module:
        """The module for a `model` section (reads type_vocab_size, encoder_head, num_labels)."""
        return EncoderOnlyTransformer(
            TransformerConfig.from_config_dict(model_cfg),
            type_vocab_size=model_cfg.get("type_vocab_size", 2),
            head=model_cfg.get("encoder_head", "mlm"),
            num_labels=model_cfg.get("num_labels", 2),
        )

    def outputs(
        self,
        module: nn.Module,
        params: Any,
        batch: Batch,
        *,
        deterministic: bool = True,
        rngs: dict[str, jax.Array] | None = None,
        return_hidden: bool = False,
    ) -> dict[str, jax.Array]:
        """Every output of the module's head on a pipeline batch (see the module)."""
        return module.apply(
            {"params": params},
            batch["inputs"],
            token_type_ids=batch.get("token_type_ids"),
            segment_ids=batch["segment_ids"],
            positions=batch["positions"],
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=return_hidden,
        )

    def apply(
        self,
        module: nn.Module,
        params: Any,
        batch: Batch,
        *,
        deterministic: bool = True,
        rngs: dict[str, jax.Array] | None = None,
        return_hidden: bool = False,
    ) -> jax.Array:
        """The head's logits as [B, T, C] for the token loss against `loss_targets`: masked-LM
        [B, L, vocab] (every position; the loss weights the masked ones; with `return_hidden`
        the tied decoder's input), classification [B, 1, labels], tagging [B, L, labels], QA
        [B, 2, L] (start, end)."""
        logits, _ = self.apply_with_aux(
            module,
            params,
            batch,
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=return_hidden,
        )
        return logits

    def apply_with_aux(
        self,
        module: nn.Module,
        params: Any,
        batch: Batch,
        *,
        deterministic: bool = True,
        rngs: dict[str, jax.Array] | None = None,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
        """(`apply`'s logits, {"nsp": (logits [B, 2], labels [B])}) with the pretraining head
        on a batch that has `nsp_label`; the auxiliary dict is empty otherwise."""
        if return_hidden and module.head not in MLM_HEADS:
            raise ValueError(f"model.encoder_head={module.head!r} has no LM head input.")
        out = self.outputs(
            module,
            params,
            batch,
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=return_hidden,
        )
        if module.head == "classification":
            return out["logits"][:, None, :], {}
        if module.head == "token_classification":
            return out["logits"], {}
        if module.head == "question_answering":
            return jnp.stack([out["start_logits"], out["end_logits"]], axis=1), {}
        lm = out["mlm_hidden" if return_hidden else "mlm_logits"]
        aux = {}
        if "nsp_logits" in out and "nsp_label" in batch:
            aux["nsp"] = (out["nsp_logits"], batch["nsp_label"][:, 0])
        return lm, aux

    def loss_targets(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """The rows' targets for `apply`'s logits: `label` [B, 1] (classification); QA's
        (start, end) [B, 2] weighted 1/2 each (BERT's mean of the two losses); else `targets`
        [B, L] (masked LM, tagging). Weights from `weights`."""
        weights = batch["weights"]
        if "label" in batch:
            return batch["label"], weights
        if "start_positions" in batch:
            targets = jnp.concatenate([batch["start_positions"], batch["end_positions"]], axis=1)
            return targets, 0.5 * jnp.concatenate([weights, weights], axis=1)
        return batch["targets"], weights

    def dummy_inputs(self, batch_size: int) -> tuple[jax.Array, ...]:
        return (jnp.zeros((batch_size, 1), jnp.int32),)

    def lm_head(self, module: nn.Module, params: Any) -> LMHead:
        """The tied decoder's table; its transform and output bias are part of the model
        (`return_hidden` gives the transformed input, without the bias)."""
        return LMHead(params["embedding"], vocab_major=True)

    def row_lengths(self, task: Any) -> dict[str, int]:
        return {"encoder": task.features["inputs"]}

    def train_flops_per_token(self, params: Any, cfg: TransformerConfig, task: Any) -> float:
        """6 * N + 12 * L * T * d_attn: N the matmul parameters (the token embedding counts: the
        tied decoder runs on every position; the position and token-type tables are lookups),
        L the layers, T the row length, d_attn = heads * head_dim."""
        n = matmul_params(params, cfg)
        if "token_type_embedding" in params:
            n -= int(np.prod(params["token_type_embedding"].shape))
        seq_len = self.row_lengths(task)["encoder"]
        return 6.0 * n + 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.qkv_dim

    def validate(self, cfg: Any, task: Any) -> None:
        """The shared checks, plus the head against the task and the unfused loss."""
        super().validate(cfg, task)
        # A config without the field (not one from the schema) means the task's first head.
        default = next((h for h, t in HEAD_TASKS.items() if t == task.name), "mlm")
        head = cfg.model.get("encoder_head", default)
        if HEAD_TASKS.get(head) != task.name:
            heads = [h for h, t in HEAD_TASKS.items() if t == task.name]
            raise ConfigError(
                f"model.encoder_head={head!r} cannot train on data.task={task.name!r}: use "
                f"model.encoder_head={' or '.join(map(repr, heads)) or 'another head'} (or "
                f"data.task={HEAD_TASKS.get(head)!r})."
            )
        wants_pairs = "nsp_label" in task.features
        if head == "pretraining" and not wants_pairs:
            raise ConfigError(
                "model.encoder_head='pretraining' needs sentence pairs: set "
                "data.sentence_pair='nsp' or 'sop', or model.encoder_head='mlm'."
            )
        if cfg.train.get("loss_chunk_size", 0):
            raise ConfigError(
                f"train.loss_chunk_size={cfg.train.loss_chunk_size}: the fused LM-head loss does "
                "not apply BERT's output bias; set train.loss_chunk_size=0 for "
                "model.family='encoder_only'."
            )

    def _validate_model_fields(self, model_cfg: Any) -> None:
        position = model_cfg.get("position", "learned")
        if position != "learned":
            raise ConfigError(
                f"model.position={position!r}: the encoder-only family uses learned "
                "absolute positions; set model.position='learned'."
            )

    def _task_mismatch(self, task: Any) -> str:
        return (
            f"data.task={task.name!r} does not make encoder-only rows but "
            f"model.family={self.name!r}; use data.task='mlm'."
        )

    # The family does not decode: every decoding hook refuses with one line.

    def check_decode_batches(self, decode_batches: int, task_name: str | None = None) -> None:
        if decode_batches:
            raise ConfigError(NO_DECODING + " Set train.decode_batches=0.")

    def decode_context(self, module: nn.Module, params: Any, prompts: Batch) -> Any:
        raise ValueError(NO_DECODING)

    def decode_apply(self, *args: Any, **kwargs: Any) -> tuple[jax.Array, dict[str, Any]]:
        raise ValueError(NO_DECODING)

    def prefill_inputs(self, prompts: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        raise ValueError(NO_DECODING)

    def prompt_batch(
        self,
        vocab: Any,
        prompts: Sequence[str],
        batch_rows: int,
        width: int,
        task: Any,
        start_id: int,
    ) -> dict[str, np.ndarray]:
        raise ValueError(NO_DECODING)

    def check_prompt_fits(self, width: int, max_new_tokens: int, cfg: TransformerConfig) -> None:
        raise ValueError(NO_DECODING)
