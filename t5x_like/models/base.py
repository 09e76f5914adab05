"""The model-family adapter: everything the rest of the code asks about a family of models.

A family (decoder-only, encoder-decoder, ...) is one `ModelFamily` subclass next to its Flax
module, registered in `t5x_like.models`. Trainer, evaluator, decoder, inference and benchmarks
ask the adapter (which batch features the model reads, how to run it on a batch, how to decode
with it, how many tokens a row holds, ...) and never test which family they hold, in the spirit
of T5X's `BaseModel` -> `EncoderDecoderModel` / `DecoderOnlyModel`.

Tasks (t5x_like.data.tasks) sit above this layer: the adapter takes them duck-typed, reading
`features` (batch key -> row length), `name`, `inputs_len`, `targets_len`, `seq_len` and
`inputs_prefix`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.errors import ConfigError
from t5x_like.layers.config import TransformerConfig

Batch = dict[str, jax.Array]


# What decoded-text metrics need, as the end of a sentence (see `decoded_metrics_problem`).
_DECODABLE = (
    "model.family='encoder_decoder', or model.family='decoder_only' with data.task='sft' "
    "(prompt -> completion rows)"
)


class DecodeEvalBatch(NamedTuple):
    """An eval batch as decoded-text metrics read it (`ModelFamily.decode_eval_batch`)."""

    prompts: dict[str, jax.Array]  # What decoding.generate takes (the family's prompt_keys).
    targets: jax.Array  # [B, T] the reference's tokens, pad (0) elsewhere; all pad: no example.
    inputs: jax.Array  # [B, I] the prompt's tokens to show with the prediction, pad elsewhere.
    keep: jax.Array  # [B] int32: generated tokens of each row that count (the rest are cut).


class LMHead(NamedTuple):
    """A model's output projection: logits = hidden @ weight^T when `vocab_major` (the tied
    embedding table, [vocab, embed]), else hidden @ weight (the `logits` kernel, [embed, vocab]).
    `hidden` is what `ModelFamily.apply(..., return_hidden=True)` returns (a tied head's scaling
    applied)."""

    weight: jax.Array
    vocab_major: bool


def _path_names(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def _is_lookup(keys: tuple[str, ...], cfg: TransformerConfig) -> bool:
    """Position tables and relative biases (always), the token embedding unless tied."""
    if keys[-1] == "rel_embedding" or any(k.endswith("position_embed") for k in keys):
        return True
    return keys[-1] == "embedding" and not cfg.tie_embeddings


def matmul_params(params: Any, cfg: TransformerConfig) -> int:
    """Parameters taking part in matmuls: the token embedding counts only if tied to the LM head;
    position tables and relative position biases (lookups) never count."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not _is_lookup(_path_names(path), cfg):
            total += math.prod(leaf.shape)
    return total


class ModelFamily(abc.ABC):
    """One family of models: its Flax module and everything the code outside models/ needs.

    Class attributes state the family's data (what it reads, what it supports); methods marked
    abstract are the per-family hooks, the others are shared.
    """

    name: ClassVar[str]
    module_class: ClassVar[type[nn.Module]]
    # Batch features the loss reads (the task must make all of them).
    features: ClassVar[tuple[str, ...]]
    # Further features it reads when a task makes them; a task making any other is refused
    # (rows with features the model would ignore belong to another family).
    optional_features: ClassVar[tuple[str, ...]] = ()
    # The segment ids of the loss's side: a row's max counts its examples.
    segment_ids_key: ClassVar[str]
    # Keys of a decoding prompt batch (tokens, segment ids), as `generate` takes them.
    prompt_keys: ClassVar[tuple[str, str]]
    # Whether the evaluator's decoded-text metrics (train.decode_batches) are wired for it
    # (on every task it reads; a family may refuse some in `decoded_metrics_problem`).
    supports_decoded_metrics: ClassVar[bool]
    # The tasks (data.task) whose eval rows it splits into prompt and reference for them;
    # None: every task it reads.
    decoded_metrics_tasks: ClassVar[tuple[str, ...] | None] = None
    # Whether it generates text (the decoding hooks below); False: inference predicts the
    # task's outputs from the head instead (experiment/task_eval.predict_text).
    generates_text: ClassVar[bool] = True
    # Hugging Face `model_type`s of the checkpoints t5x_like.interop converts for this family.
    hf_model_types: ClassVar[tuple[str, ...]]

    # -- the module --------------------------------------------------------------------------

    def build(self, model_cfg: Any) -> nn.Module:
        """The module for the `model` section of an experiment config."""
        return self.module_class(TransformerConfig.from_config_dict(model_cfg))

    @abc.abstractmethod
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
        """Teacher-forced logits [B, L, vocab] on a pipeline batch; with `return_hidden`, the
        LM head's input [B, L, d_model] instead (see `lm_head`)."""

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
        """(`apply`'s output, {name: (logits [B, C], labels [B])} of the sentence-level heads
        whose loss the training loss adds; e.g. BERT's next-sentence prediction). None here."""
        out = self.apply(
            module,
            params,
            batch,
            deterministic=deterministic,
            rngs=rngs,
            return_hidden=return_hidden,
        )
        return out, {}

    def loss_targets(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """(targets [B, T], weights [B, T]) that `apply`'s logits [B, T, C] are scored against:
        the rows' `targets` and `weights` unless the family's rows name them otherwise."""
        return batch["targets"], batch["weights"]

    @abc.abstractmethod
    def dummy_inputs(self, batch_size: int) -> tuple[jax.Array, ...]:
        """Positional inputs of `module.init`: [batch_size, 1] token ids."""

    def init_params(self, module: nn.Module, rng: jax.Array, batch_size: int) -> Any:
        """Boxed (logically annotated) params, from [batch_size, 1] dummy inputs."""
        return module.init(rng, *self.dummy_inputs(batch_size))["params"]

    def lm_head(self, module: nn.Module, params: Any) -> LMHead:
        """The LM head parameters (untied: the top-level `logits` Dense)."""
        if module.config.tie_embeddings:
            return LMHead(params["token_embed"]["embedding"], vocab_major=True)
        return LMHead(params["logits"]["kernel"], vocab_major=False)

    # -- rows, tokens and FLOPs --------------------------------------------------------------

    @abc.abstractmethod
    def row_lengths(self, task: Any) -> dict[str, int]:
        """Tokens per row of each side the model runs: {"decoder": T} or, with an encoder,
        {"encoder": T_enc, "decoder": T_dec} (encoder first)."""

    def tokens_per_row(self, task: Any) -> int:
        """Tokens of one row as the throughput meter counts them (all sides)."""
        return sum(self.row_lengths(task).values())

    @abc.abstractmethod
    def train_flops_per_token(self, params: Any, cfg: TransformerConfig, task: Any) -> float:
        """Training (forward + backward) FLOPs per token of the task's rows, as the PaLM
        appendix-B formula counts them (see the subclasses): matmuls only; norms, softmax,
        activations, the loss and the optimizer update are not counted (a few % of the total
        for real model sizes). Works on abstract params."""

    # -- config checks -----------------------------------------------------------------------

    def validate(self, cfg: Any, task: Any) -> None:
        """Raises ConfigError when the task does not make the features the model reads, a
        family-specific model field is wrong, or the config asks for what the family does not
        support (decoded-text metrics)."""
        if not set(self.features) <= set(task.features):
            raise ConfigError(self._task_mismatch(task))
        unread = set(task.features) - set(self.features) - set(self.optional_features)
        if unread:
            raise ConfigError(
                f"data.task={task.name!r} makes rows with {sorted(unread)}, which "
                f"model.family={self.name!r} does not read: pick a task of that family."
            )
        self._validate_model_fields(cfg.model)
        problem = self.decoded_metrics_problem(task.name)
        if cfg.train.decode_batches and problem:
            raise ConfigError(
                f"train.decode_batches > 0 (decoded-text metrics) needs {problem}; set "
                "train.decode_batches=0."
            )

    @abc.abstractmethod
    def _validate_model_fields(self, model_cfg: Any) -> None:
        """Checks of the `model` fields only this family reads."""

    @abc.abstractmethod
    def _task_mismatch(self, task: Any) -> str:
        """The error message for a task whose rows this family cannot read."""

    def decoded_metrics_problem(self, task_name: str | None) -> str | None:
        """What decoded-text metrics (train.decode_batches) would need that this family on
        data.task=`task_name` lacks, as the end of a sentence; None when they work.

        A family decodes a task's eval rows when it can split them into a prompt and a
        reference (`decode_eval_batch`): encoder-decoder rows always, decoder-only SFT rows.
        """
        tasks = self.decoded_metrics_tasks
        if self.supports_decoded_metrics and (tasks is None or task_name in tasks):
            return None
        return f"{_DECODABLE}; this run is model.family={self.name!r} on data.task={task_name!r}"

    def check_decode_batches(self, decode_batches: int, task_name: str | None = None) -> None:
        """Raises ConfigError if `decode_batches` > 0 asks for decoded metrics this family
        cannot compute on data.task=`task_name`."""
        problem = self.decoded_metrics_problem(task_name)
        if decode_batches and problem:
            raise ConfigError(
                f"decode_batches={decode_batches}: decoded-text metrics need {problem}; use "
                "decode_batches=0."
            )

    def decode_max_new_tokens(self, task: Any) -> int:
        """Tokens decoded per eval row for decoded-text metrics: the rows' target length."""
        return task.targets_len

    def decode_eval_batch(self, batch: Batch, task: Any) -> DecodeEvalBatch:
        """An eval batch (one example per row) split into what decoded-text metrics need:
        here the prompt is the batch's `prompt_keys` features, the reference its targets."""
        tokens_key, segment_ids_key = self.prompt_keys
        targets = batch["targets"]
        return DecodeEvalBatch(
            prompts={k: batch[k] for k in (tokens_key, segment_ids_key)},
            targets=targets,
            inputs=batch[tokens_key],
            keep=jnp.full(targets.shape[:1], self.decode_max_new_tokens(task), jnp.int32),
        )

    # -- decoding (what decoding.CachedDecoder runs) -----------------------------------------

    @abc.abstractmethod
    def decode_context(self, module: nn.Module, params: Any, prompts: Batch) -> Any:
        """What every cached step needs besides the cache (the encoder's outputs), computed
        once from the prompts; None when nothing is."""

    @abc.abstractmethod
    def decode_apply(
        self,
        module: nn.Module,
        variables: dict[str, Any],
        tokens: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        context: Any,
        *,
        init_cache: bool = False,
        last_only: bool = False,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """(logits, mutated variables) of the decoding-mode `module` on new tokens, their
        cache appended; `init_cache`: the call that creates the cache (from dummy tokens);
        `last_only` may restrict the LM head to the last position."""

    @abc.abstractmethod
    def prefill_inputs(self, prompts: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(tokens, segment ids, positions) [B, P] the prefill runs on."""

    def tile_context(self, context: Any, beams: int) -> Any:
        """The decode context with each row repeated for its beams."""
        return context

    # -- inference prompts -------------------------------------------------------------------

    @abc.abstractmethod
    def prompt_batch(
        self,
        vocab: Any,
        prompts: Sequence[str],
        batch_rows: int,
        width: int,
        task: Any,
        start_id: int,
    ) -> dict[str, np.ndarray]:
        """A decoding batch (`prompt_keys`) of `batch_rows` rows for the text prompts (missing
        rows empty); `width` is the decoder prompt width, `start_id` the decoder start token."""

    @abc.abstractmethod
    def check_prompt_fits(self, width: int, max_new_tokens: int, cfg: TransformerConfig) -> None:
        """Raises ValueError if a prompt of `width` tokens plus the new tokens cannot decode."""
