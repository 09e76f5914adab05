"""The experiment config schema: every field's type, default, allowed values, check and doc.

`SCHEMA` declares each field once. `base_config()` builds the ConfigDict the files in configs/
start from (every field at its default); `check_fields` runs the single-field checks the schema
declares (types, allowed values, ranges); `field_help` lists the fields for `--help_config`.
Checks across sections and against the run's devices are in t5x_like/experiment/validation.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from ml_collections import config_dict

# ConfigError stays importable from here too (it was defined here before t5x_like.errors).
from t5x_like.errors import ConfigError
from t5x_like.layers import config as layer_config

MESH_AXES = ("data", "fsdp", "tensor")
OPTIMIZERS = ("adamw", "adafactor", "sgd")
NAN_POLICIES = ("stop", "skip")  # What a non-finite loss or gradient norm does to a run.
SCHEDULES = ("cosine", "rsqrt", "constant")
SECTIONS = ("model", "data", "train", "optimizer", "mesh", "partitioning")

# How a type is named in errors and --help_config.
_KINDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field. `check(value)` is False for a value that cannot work; `error` is then
    the message, formatted with `field` (its dotted path) and `value`. A field whose default is
    None is optional: None skips its checks."""

    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], bool] | None = None
    error: str = ""


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    """A finite int or float (inf and NaN pass a type check but no range check)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least_zero(value: Any) -> bool:
    return _number(value) and value >= 0


def _above_zero(value: Any) -> bool:
    return _number(value) and value > 0


def _decay_rate(value: Any) -> bool:
    return _number(value) and 0.0 <= value < 1.0


def _integer_at_least_zero(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0.0 <= value < 1.0


def _mesh_size(value: Any) -> bool:
    return isinstance(value, int) and (value > 0 or value == -1)


_POSITIVE = dict(check=_positive, error="{field}={value!r} must be a positive integer.")
_MESH = dict(
    check=_mesh_size,
    error="{field}={value!r} must be a positive integer or -1 (all remaining devices).",
)
_PRESET_DOC = (
    "dp | fsdp | tp | fsdp_tp | custom: which parameters and activations are sharded over which "
    "mesh axes (t5x_like/partitioning.py PRESETS). fsdp_tp: batch over (data, fsdp), embed over "
    "fsdp, heads/kv_heads/mlp/vocab over tensor; custom: partitioning.rules."
)

# Defaults: the decoder-only LLaMA-style model of configs/decoder_only.py; fields that model
# does not read default to what the code took for a missing field before they were declared.
SCHEMA: dict[str, tuple[Field, ...]] = {
    "": (
        Field("name", str, "decoder_only_small", "The experiment's name (logs, config.json)."),
        Field("seed", int, 0, "Seeds parameter init, dropout and the data order."),
    ),
    "model": (
        Field(
            "family",
            str,
            "decoder_only",
            "Model family (t5x_like.models): decoder_only, encoder_decoder or encoder_only; "
            "must match data.task.",
        ),
        Field(
            "vocab_size",
            int,
            None,
            "Embedding rows (>= the vocabulary's); None: the vocabulary's size rounded up to a "
            "multiple of 128.",
            **_POSITIVE,
        ),
        Field("d_model", int, 256, "Width of the residual stream.", **_POSITIVE),
        Field("num_layers", int, 4, "Layers (encoder layers for encoder-decoder).", **_POSITIVE),
        Field(
            "num_decoder_layers",
            int,
            None,
            "Encoder-decoder: decoder layers; None: as many as the encoder.",
        ),
        Field("num_heads", int, 4, "Query heads.", **_POSITIVE),
        Field(
            "num_kv_heads",
            int,
            None,
            "Key/value heads (GQA/MQA); None: num_heads (MHA). Must divide num_heads.",
            **_POSITIVE,
        ),
        Field(
            "head_dim",
            int,
            None,
            "Per-head width; None: d_model // num_heads. Even with RoPE.",
            **_POSITIVE,
        ),
        Field("mlp_dim", int, 768, "Hidden width of the MLP.", **_POSITIVE),
        Field(
            "activation",
            str,
            "swiglu",
            "MLP activation; the gated ones (swiglu, geglu, reglu) have two input matrices.",
            choices=layer_config.ACTIVATIONS,
        ),
        Field("norm", str, "rmsnorm", "Normalisation layer.", choices=layer_config.NORMS),
        Field("norm_eps", float, 1e-6, "Epsilon of the norms."),
        Field(
            "norm_position",
            str,
            "pre",
            "pre: normalise each sublayer's input; post: the original Transformer.",
            choices=layer_config.NORM_POSITIONS,
        ),
        Field(
            "position",
            str,
            "rope",
            "Position encoding (relative: T5's learned bias buckets).",
            choices=layer_config.POSITIONS,
        ),
        Field(
            "relative_attention_num_buckets",
            int,
            32,
            "position=relative: T5 relative position buckets (>= 4; half exact, half logarithmic).",
        ),
        Field(
            "relative_attention_max_distance",
            int,
            128,
            "position=relative: distance beyond which relative positions share a bucket.",
        ),
        Field(
            "scale_attention_logits",
            bool,
            True,
            "Scale attention logits by head_dim**-0.5 (T5 folds it into the query init instead).",
        ),
        Field(
            "max_len",
            int,
            2048,
            "Rows of the learned position table (position=learned only); >= the sequence length.",
        ),
        Field("rope_theta", float, 10_000.0, "RoPE base frequency."),
        Field(
            "rope_scaling_factor",
            float,
            None,
            "Llama 3's RoPE scaling (HF rope_type 'llama3'): long wavelengths divided by this "
            "factor; None: unscaled RoPE.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0 (Llama 3.1: 8.0), or None.",
        ),
        Field(
            "rope_low_freq_factor",
            float,
            1.0,
            "Llama 3 RoPE scaling: wavelengths above rope_original_max_len / this are scaled.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0.",
        ),
        Field(
            "rope_high_freq_factor",
            float,
            4.0,
            "Llama 3 RoPE scaling: wavelengths below rope_original_max_len / this are kept.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0.",
        ),
        Field(
            "rope_original_max_len",
            int,
            8192,
            "Llama 3 RoPE scaling: the context length the model was pretrained at.",
            **_POSITIVE,
        ),
        Field(
            "tie_embeddings",
            bool,
            True,
            "Share the input embedding with the output (LM head) projection.",
        ),
        Field(
            "scale_tied_logits",
            bool,
            True,
            "Tied head: logits * d_model**-0.5 (GPT-2: False).",
        ),
        Field(
            "embed_init_std",
            float,
            0.3,
            "decoder_only: std of the token embedding's normal init, and of the logits at init "
            "(tied and scaled by d_model**-0.5, or untied: the logits kernel scaled alike), so "
            "a fresh model starts at loss ln(vocab) at any depth (GPT-2: 0.02 with unscaled "
            "tied logits; 1.0: the N(0, 1) of earlier versions). encoder_decoder keeps T5's "
            "N(0, 1).",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0 (0.3 by default; GPT-2: 0.02).",
        ),
        Field(
            "scale_residual_init",
            bool,
            True,
            "decoder_only: initialise each residual branch's output projection (attention out, "
            "MLP wo) at 1/sqrt(2 * num_layers) of its fan-in std, as GPT-2 and LLaMA do; "
            "encoder_decoder keeps T5's unscaled init.",
        ),
        Field("use_bias", bool, False, "Biases in the dense layers."),
        Field(
            "qkv_bias",
            bool,
            False,
            "Biases on the query/key/value projections alone (Qwen2); use_bias puts them on "
            "every dense layer.",
        ),
        Field("qk_norm", bool, False, "RMSNorm of each query and key head before RoPE (Qwen3)."),
        Field(
            "scale_embeddings",
            bool,
            False,
            "Multiply the token embeddings by sqrt(d_model) before the first layer (Gemma).",
        ),
        Field(
            "sliding_window",
            int,
            None,
            "Each token attends to itself and at most sliding_window - 1 earlier tokens, in "
            "training and in the KV-cache decoding (Mistral); None: to all.",
            **_POSITIVE,
        ),
        Field(
            "global_every",
            int,
            None,
            "With sliding_window: every global_every-th layer attends to all tokens, the others "
            "within the window (Gemma 2: 2, Gemma 3: 6); None: every layer within the window.",
            **_POSITIVE,
        ),
        Field(
            "rope_local_theta",
            float,
            None,
            "RoPE base of the sliding-window layers, which then take no RoPE scaling (Gemma 3: "
            "1e4); None: rope_theta.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0, or None.",
        ),
        Field(
            "attn_logit_softcap",
            float,
            None,
            "Attention logits -> cap * tanh(logits / cap) (Gemma 2: 50); None: uncapped.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0, or None.",
        ),
        Field(
            "final_logit_softcap",
            float,
            None,
            "LM head logits -> cap * tanh(logits / cap) (Gemma 2: 30; needs "
            "train.loss_chunk_size=0); None: uncapped.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0, or None.",
        ),
        Field(
            "query_pre_attn_scalar",
            float,
            None,
            "Attention logits scaled by this**-0.5 instead of head_dim**-0.5 (Gemma 2 / 3); "
            "None: head_dim.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0, or None.",
        ),
        Field(
            "post_branch_norm",
            bool,
            False,
            "Pre-norm layers also normalise each branch's output before the residual add "
            "(Gemma 2 / 3's four norms per layer).",
        ),
        Field(
            "dropout_rate",
            float,
            0.0,
            "Dropout in training, in [0, 1) (0 disables it; T5 fine-tunes with 0.1).",
            check=_fraction,
            error="{field}={value} must be in [0, 1): the fraction of activations dropped in "
            "training (0 disables dropout; T5 fine-tunes with 0.1).",
        ),
        Field(
            "dtype",
            str,
            "float32",
            "Compute dtype (mixed precision: bfloat16 computes activations and matmuls in bf16 "
            "while params, gradients and optimizer state stay in param_dtype; the loss is "
            "always float32).",
            choices=layer_config.DTYPES,
        ),
        Field(
            "param_dtype",
            str,
            "float32",
            "Dtype of params, gradients and optimizer state (keep float32).",
            choices=layer_config.DTYPES,
        ),
        Field(
            "scan_layers",
            bool,
            False,
            "One nn.scan over stacked layer params (a 'layers' axis): compile time independent "
            "of depth.",
        ),
        Field(
            "remat",
            str,
            "none",
            "Recompute activations in the backward pass (layers/config.py REMAT_POLICIES).",
            choices=layer_config.REMAT_POLICIES,
        ),
        Field(
            "attention_impl",
            str,
            "einsum",
            "Attention core: einsum (XLA; any device) or cudnn (jax.nn.dot_product_attention's "
            "fused kernel: NVIDIA GPUs, model.dtype bfloat16/float16, no relative positions).",
            choices=layer_config.ATTENTION_IMPLS,
        ),
        Field(
            "type_vocab_size",
            int,
            2,
            "encoder_only: rows of the token-type embedding (BERT 2, RoBERTa 1; 0: none).",
            check=_integer_at_least_zero,
            error="{field}={value!r} must be an integer >= 0 (BERT uses 2).",
        ),
        Field(
            "encoder_head",
            str,
            "mlm",
            "encoder_only: the heads on the encoder (models/encoder_only.py): mlm (masked LM), "
            "pretraining (mlm + next-sentence prediction), classification, "
            "token_classification, question_answering.",
            choices=(
                "mlm",
                "pretraining",
                "classification",
                "token_classification",
                "question_answering",
            ),
        ),
        Field(
            "num_labels",
            int,
            2,
            "encoder_only: outputs of the classification and token_classification heads.",
            **_POSITIVE,
        ),
    ),
    "data": (
        Field(
            "task",
            str,
            "causal_lm",
            "causal_lm (decoder-only rows), sft (decoder-only prompt/completion rows, loss on "
            "the completion), span_corruption, prefix_lm, seq2seq (encoder-decoder rows), mlm "
            "(encoder-only masked-LM rows) or the encoder-only fine-tuning tasks "
            "classification, token_classification, question_answering (labelled data: "
            "data.dataset a TFDS name, a .jsonl/.csv/.tsv file or directory, or builtin:<name>).",
        ),
        Field(
            "dataset",
            str,
            "t5x_like_corpus",
            "A TFDS dataset prepared as array_record under data_dir (t5x_like_corpus and "
            "t5x_like_docstrings are built on the spot; nothing is downloaded), or your own "
            "files: a .txt, .jsonl or .tsv file or glob (split train) or a directory of "
            "<split>.txt/.jsonl/.tsv files.",
        ),
        Field(
            "text_sample_by",
            str,
            "paragraph",
            "A .txt data.dataset's documents: blank-line-separated paragraphs, lines, or one "
            "per file (document).",
            choices=("paragraph", "line", "document"),
        ),
        Field(
            "data_dir", str, None, "TFDS data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets."
        ),
        Field("train_split", str, "train", "Split to train on (and to train the vocabulary on)."),
        Field("eval_split", str, "validation", "Split to evaluate on."),
        Field(
            "text_key",
            str,
            "text",
            "The records' text feature (causal_lm, span_corruption, prefix_lm).",
        ),
        Field("inputs_key", str, "inputs", "seq2seq: the records' input text feature."),
        Field("targets_key", str, "targets", "seq2seq: the records' target text feature."),
        Field("inputs_prefix", str, "", "Text put before every seq2seq input, e.g. 'summarize: '."),
        Field(
            "seq_len", int, 128, "Tokens per decoder-only (causal_lm) or encoder-only (mlm) row."
        ),
        Field(
            "inputs_len",
            int,
            None,
            "Encoder tokens per row (span corruption sizes the raw chunk so its corrupted "
            "inputs fill it).",
        ),
        Field(
            "targets_len",
            int,
            None,
            "Decoder tokens per row; must hold span corruption's targets (T5: 512 -> 114).",
        ),
        Field(
            "noise_density",
            float,
            0.15,
            "Span corruption: fraction of tokens masked, in (0, 1).",
        ),
        Field(
            "mean_noise_span_length",
            float,
            3.0,
            "Span corruption: mean length of a masked span (>= 1).",
        ),
        Field(
            "mlm_probability",
            float,
            0.15,
            "mlm: fraction of the (non-special) tokens selected for prediction, in (0, 1); each "
            "becomes [MASK] 80%, a random piece 10%, itself 10%.",
        ),
        Field(
            "whole_word_masking",
            bool,
            False,
            "mlm: select whole words (a SentencePiece '\u2581' piece and its continuation).",
        ),
        Field(
            "sentence_pair",
            str,
            "none",
            "mlm: rows of [CLS] a [SEP] b [SEP] with an nsp_label: nsp (b a random other "
            "document's half the time) or sop (a and b swapped half the time); none: "
            "[CLS] text [SEP], packed.",
            choices=("none", "nsp", "sop"),
        ),
        Field("prompt_key", str, "prompt", "sft: the records' prompt text feature."),
        Field("completion_key", str, "completion", "sft: the records' completion text feature."),
        Field(
            "sft_too_long",
            str,
            "error",
            "sft: an example longer than seq_len is an error, or truncate (the prompt's end, "
            "the completion's start) or drop it; each one logged with a running count.",
            choices=("error", "truncate", "drop"),
        ),
        Field(
            "labels",
            str,
            "",
            "Fine-tuning: the label (or BIO tag) set, comma-separated, in id order; '': the "
            "dataset's class names, else the labels seen in the train split, sorted.",
        ),
        Field("text_b_key", str, "", "classification: the second sentence's feature ('': none)."),
        Field("label_key", str, "label", "classification: the records' label feature."),
        Field("tokens_key", str, "tokens", "token_classification: the records' word list."),
        Field("tags_key", str, "tags", "token_classification: the records' BIO tag list."),
        Field("id_key", str, "id", "question_answering: the records' id (absent: the index)."),
        Field("question_key", str, "question", "question_answering: the question feature."),
        Field("context_key", str, "context", "question_answering: the context feature."),
        Field(
            "answers_key",
            str,
            "answers",
            "question_answering: the answers ({text: [...], answer_start: [...]}, SQuAD-style).",
        ),
        Field(
            "doc_stride",
            int,
            32,
            "question_answering: context tokens from one window's start to the next's (BERT's "
            "run_squad step, not Hugging Face's overlap); at most seq_len - max_query_len - 3.",
            **_POSITIVE,
        ),
        Field(
            "max_query_len",
            int,
            64,
            "question_answering: the question's most tokens (longer ones are cut).",
            **_POSITIVE,
        ),
        Field("pack", bool, True, "Pack several examples into one row (segment ids apart)."),
        Field(
            "vocab_path",
            str,
            None,
            "A SentencePiece .model (pad 0, eos 1, unk 2, no bos); None: train one on the train "
            "split, cached under data_dir.",
        ),
        Field(
            "vocab_dataset",
            str,
            None,
            "Dataset whose train split trains the vocabulary; None: data.dataset (fine-tuning "
            "sets the pretraining corpus).",
        ),
        Field("vocab_size", int, 2048, "SentencePiece pieces when training a vocabulary."),
        Field(
            "extra_ids",
            int,
            0,
            "T5 sentinel ids appended to the vocabulary; span corruption needs one per noise "
            "span, mlm 3 ([CLS], [SEP], [MASK]).",
            check=_integer_at_least_zero,
            error="{field}={value!r} must be an integer >= 0.",
        ),
        Field(
            "num_shards",
            int,
            None,
            "Logical data shards of the training batch (train.batch_size must be a multiple): "
            "batches depend on (seed, step, num_shards) only, so any process count dividing it "
            "trains on the same data and resumes from the same checkpoint. None: the largest "
            "of 8, 4, 2, 1 dividing the batch size; 1: the single-pipeline order of older "
            "versions.",
            check=_positive,
            error="{field}={value!r} must be a positive integer or None (auto).",
        ),
    ),
    "train": (
        Field("steps", int, 400, "Optimizer steps (also the schedule's length).", **_POSITIVE),
        Field(
            "batch_size",
            int,
            16,
            "Global batch (rows), across all processes; a multiple of mesh.data * mesh.fsdp.",
            **_POSITIVE,
        ),
        Field(
            "microbatches",
            int,
            1,
            "Gradient accumulation: micro-batches per step, one update on their summed "
            "gradients (same result as the whole batch).",
            check=_positive,
            error="{field}={value!r} must be a positive integer (1: no accumulation).",
        ),
        Field(
            "log_every",
            int,
            25,
            "Steps between train-metric logs (metrics.jsonl, TensorBoard).",
            **_POSITIVE,
        ),
        Field(
            "eval_every",
            int,
            100,
            "Steps between evaluations; 0 disables them.",
            check=_at_least_zero,
            error="{field} must be >= 0 (0 disables eval).",
        ),
        Field(
            "eval_batches",
            int,
            16,
            "Batches per evaluation; 0: the whole split.",
            check=_at_least_zero,
            error="{field} must be >= 0.",
        ),
        Field("eval_at_start", bool, True, "Also evaluate the freshly initialised model (step 0)."),
        Field(
            "decode_batches",
            int,
            0,
            "Batches decoded per eval for text metrics (encoder_decoder; decoder_only on "
            "data.task=sft), examples in decodes/step_N.jsonl.",
            check=_integer_at_least_zero,
            error="{field}={value!r} must be an integer >= 0 (0 disables decoding).",
        ),
        Field(
            "decode_strategy",
            str,
            "greedy",
            "How decode_batches decode (t5x_like/decoding.py).",
            choices=("greedy", "sample", "beam"),
        ),
        Field(
            "decode_temperature",
            float,
            1.0,
            "decode_strategy=sample: the sampling temperature.",
            check=_above_zero,
            error="{field}={value!r} must be a number > 0.",
        ),
        Field(
            "decode_top_k",
            int,
            0,
            "decode_strategy=sample: sample among the k most likely tokens (0: all).",
            check=_integer_at_least_zero,
            error="{field}={value!r} must be an integer >= 0 (0 disables it).",
        ),
        Field(
            "decode_top_p",
            float,
            1.0,
            "decode_strategy=sample: nucleus probability mass (1.0: all).",
            check=lambda v: _number(v) and 0 < v <= 1,
            error="{field}={value!r} must be in (0, 1] (1 disables it).",
        ),
        Field("decode_num_beams", int, 4, "decode_strategy=beam: beams per row.", **_POSITIVE),
        Field(
            "decode_stop",
            tuple,
            (),
            "Stop strings, e.g. ('\\n',): each prediction is cut at the first one (and greedy "
            "or sampled rows stop there when the vocabulary spells it as tokens).",
            check=lambda v: (
                isinstance(v, (tuple, list)) and all(isinstance(s, str) and s for s in v)
            ),
            error="{field}={value!r} must be a tuple of non-empty strings, e.g. ('\\n',).",
        ),
        Field(
            "checkpoint_every",
            int,
            100,
            "Steps between checkpoints (and one at the end).",
            **_POSITIVE,
        ),
        Field("max_to_keep", int, 3, "Checkpoints kept.", **_POSITIVE),
        Field("async_checkpoint", bool, True, "Save checkpoints in the background."),
        Field(
            "watchdog_s",
            float,
            1800.0,
            "Exit (status 3, naming the step and host) when one step, eval or checkpoint save "
            "makes no progress for this many seconds: a hung collective or store. 0: off.",
            check=_at_least_zero,
            error="{field} must be >= 0 (0 disables the watchdog).",
        ),
        Field(
            "nan_policy",
            str,
            "stop",
            "A non-finite loss or grad norm: stop the run (the bad state is never saved) or "
            "skip that update (optax.apply_if_finite; changes the optimizer-state layout).",
            choices=NAN_POLICIES,
        ),
        Field(
            "allow_config_change",
            bool,
            False,
            "Resume even if model-shaping fields differ from the workdir's config.json.",
            check=lambda v: isinstance(v, bool),
            error="{field}={value!r} must be True or False.",
        ),
        Field(
            "z_loss",
            float,
            1e-4,
            "Weight of the log-partition (z) loss.",
            check=_at_least_zero,
            error="{field} must be >= 0.",
        ),
        Field(
            "label_smoothing",
            float,
            0.0,
            "Label smoothing, in [0, 1).",
            check=_fraction,
            error="{field}={value} must be in [0, 1): the probability mass spread over the "
            "other tokens (0 disables it; 0.1 is common).",
        ),
        Field(
            "loss_chunk_size",
            int,
            0,
            "> 0: the LM head and the loss run fused, this many positions of every row at a "
            "time, so the [batch, length, vocab] logits never exist at once (same loss and "
            "gradients to 1e-6; faster on CPU, far less memory for large vocabularies). 0: all "
            "logits, then the loss.",
            check=lambda v: (v or 0) >= 0,
            error="{field}={value} must be >= 0: positions of each row per chunk of the fused "
            "LM head + loss (0 computes all logits at once).",
        ),
        Field(
            "init_from",
            str,
            None,
            "Fine-tuning: a workdir (or its checkpoints/) whose params (not its optimizer "
            "state) start the run.",
        ),
        Field("init_step", int, None, "Step of init_from to load; None: its latest."),
        Field(
            "peak_flops",
            float,
            None,
            "Peak FLOP/s of all the run's devices, for the MFU; None: the datasheet figure of "
            "known accelerators, on CPU a matmul measured once per machine and dtype and cached "
            "in ~/.cache/t5x_like/peak_flops.json (training/flops.py).",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0 (FLOP/s), or None.",
        ),
        Field(
            "compilation_cache_dir",
            str,
            "~/.cache/t5x_like/xla",
            "Persistent XLA compilation cache; '' disables it.",
        ),
    ),
    "optimizer": (
        Field("name", str, "adamw", "The optimizer.", choices=OPTIMIZERS),
        Field(
            "learning_rate",
            float,
            3e-3,
            "Peak learning rate.",
            check=_above_zero,
            error="{field}={value} must be > 0 (and finite).",
        ),
        Field(
            "schedule",
            str,
            "cosine",
            "After linear warmup from 0: cosine decay to end_lr_fraction, rsqrt decay, or "
            "constant.",
            choices=SCHEDULES,
        ),
        Field(
            "warmup_steps",
            int,
            40,
            "Linear warmup steps; < train.steps with cosine.",
            check=_at_least_zero,
            error="{field} must be >= 0.",
        ),
        Field(
            "end_lr_fraction",
            float,
            0.1,
            "Cosine: final learning rate over the peak.",
            check=lambda v: _number(v) and 0.0 <= v <= 1.0,
            error="{field}={value} must be in [0, 1] (the final learning rate over the peak).",
        ),
        Field(
            "weight_decay",
            float,
            0.1,
            "Decoupled weight decay (not on norms and biases).",
            check=_at_least_zero,
            error="{field}={value} must be a finite number >= 0 (0 disables it).",
        ),
        Field(
            "b1",
            float,
            0.9,
            "Adam first-moment decay rate.",
            check=_decay_rate,
            error="{field}={value} must be in [0, 1) (Adam's moment decay rate; 0.9 is usual).",
        ),
        Field(
            "b2",
            float,
            0.95,
            "Adam second-moment decay rate.",
            check=_decay_rate,
            error="{field}={value} must be in [0, 1) (Adam's moment decay rate; 0.95-0.999).",
        ),
        Field(
            "eps",
            float,
            1e-8,
            "Adam epsilon.",
            check=_above_zero,
            error="{field}={value} must be a finite number > 0 (1e-8 is usual).",
        ),
        Field(
            "grad_clip_norm",
            float,
            1.0,
            "Clip gradients to this global norm; 0 disables clipping.",
            check=_at_least_zero,
            error="{field}={value} must be a finite number >= 0 (0 disables).",
        ),
    ),
    "mesh": (
        Field(
            "data",
            int,
            -1,
            "Data-parallel axis size; -1: all remaining devices (one axis at most).",
            **_MESH,
        ),
        Field("fsdp", int, 1, "Fully-sharded data-parallel axis size (params on embed).", **_MESH),
        Field("tensor", int, 1, "Tensor-parallel axis size (heads, MLP, vocab).", **_MESH),
        Field(
            "num_slices",
            int,
            1,
            "Multi-slice runs: the data axis spans this many slices over the slow data-center "
            "network; fsdp and tensor stay inside a slice. mesh.data must be a multiple.",
        ),
    ),
    "partitioning": (
        Field("preset", str, "fsdp_tp", _PRESET_DOC),
        Field(
            "rules",
            tuple,
            None,
            "preset=custom: (logical axis, mesh axes) pairs, e.g. "
            "(('batch', ('data', 'fsdp')), ('embed', 'fsdp'), ...); earlier rules win.",
        ),
    ),
}


def fields() -> Iterator[tuple[str, Field]]:
    """(dotted path, field) of every field, in declaration order."""
    for section, section_fields in SCHEMA.items():
        for f in section_fields:
            yield (f"{section}.{f.name}" if section else f.name), f


FIELDS: dict[str, Field] = dict(fields())


def kind(f: Field) -> str:
    """The field's type as errors name it ("an integer", ...)."""
    return _KINDS.get(f.type, f"a {f.type.__name__}")


def _initial(f: Field) -> Any:
    """The ConfigDict value of a field at its default: None becomes a typed placeholder, which
    an override still parses as the field's type and which can be set back to None."""
    return config_dict.placeholder(f.type) if f.default is None else f.default


def base_config() -> config_dict.ConfigDict:
    """A config holding every field at its default (the configs/*.py files start from it)."""
    cfg = config_dict.ConfigDict()
    for section, section_fields in SCHEMA.items():
        target = cfg
        if section:
            cfg[section] = config_dict.ConfigDict()
            target = cfg[section]
        for f in section_fields:
            target[f.name] = _initial(f)
    return cfg


def _has_type(f: Field, value: Any) -> bool:
    if f.type is tuple:
        return True  # Rules come as tuples from files, lists from JSON: checked where used.
    if f.type is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if f.type is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, f.type)


def check_field(path: str, value: Any) -> None:
    """ConfigError when `value` cannot be field `path`'s: its type, allowed values or range."""
    f = FIELDS[path]
    if value is None and f.default is None:
        return
    if value is not None and not _has_type(f, value):
        raise ConfigError(
            f"{path}={value!r} is a {type(value).__name__}, but it must be {kind(f)}: fix the "
            f"config file, or override it with --config.{path}=<{kind(f)}>."
        )
    if f.choices and value not in f.choices:
        raise ConfigError(f"{path}={value!r} is not supported; choose one of {f.choices}.")
    if f.check is not None and not f.check(value):
        raise ConfigError(f.error.format(field=path, value=value))


def check_fields(cfg: Any) -> None:
    """Runs `check_field` on every schema field the config has, in declaration order.

    Raises:
      ConfigError: for a missing section, or the first field whose value cannot work.
    """
    for section in SECTIONS:
        if section not in cfg:
            raise ConfigError(f"The config has no '{section}' section.")
    for path in FIELDS:
        section, _, name = path.rpartition(".")
        holder = cfg[section] if section else cfg
        if name in holder:
            check_field(path, holder[name])


def field_help() -> str:
    """Every field, its type, default, allowed values and doc, for --help_config."""
    lines = []
    for path, f in FIELDS.items():
        line = f"{path} ({f.type.__name__}, default {f.default!r})"
        if f.choices:
            line += f", one of {', '.join(f.choices)}"
        lines.append(f"{line}\n    {f.doc}")
    return "\n".join(lines)


# The headings of configs/README.md's field tables.
_SECTION_TITLES = {
    "": "Top level",
    "model": "`model`: the Transformer",
    "data": "`data`: dataset, task and vocabulary",
    "train": "`train`: the loop, evaluation and checkpoints",
    "optimizer": "`optimizer`",
    "mesh": "`mesh`: device mesh",
    "partitioning": "`partitioning`: what is sharded over which mesh axis",
}


def fields_markdown() -> str:
    """The field tables of configs/README.md, one per section (tests/test_help.py checks that
    the README holds exactly this text)."""
    parts = []
    for section, section_fields in SCHEMA.items():
        rows = ["| Field | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
        for f in section_fields:
            doc = f.doc + (f" One of {', '.join(f.choices)}." if f.choices else "")
            doc = doc.replace("|", "\\|")
            rows.append(f"| `{f.name}` | {f.type.__name__} | `{f.default!r}` | {doc} |")
        parts.append(f"### {_SECTION_TITLES[section]}\n\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


def to_json(cfg: config_dict.ConfigDict) -> str:
    """The resolved config as JSON text, as saved into the workdir."""
    return json.dumps(json.loads(cfg.to_json_best_effort()), indent=2, sort_keys=True)


def save_config(cfg: config_dict.ConfigDict, workdir: str) -> str:
    """Writes `config.json` into the workdir and returns its path."""
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(to_json(cfg) + "\n")
    os.replace(tmp, path)
    return path


def preset(table: dict[str, Any], key: str, what: str) -> Any:
    """`table[key]` for a config file's argument; a ConfigError listing the choices if absent."""
    if key not in table:
        raise ConfigError(f"unknown {what} {key!r}; choose one of {', '.join(table)}")
    return table[key]


def load_file(path: str, arg: str | None = None) -> config_dict.ConfigDict:
    """`get_config(arg)` of the config file at `path` (no argument when `arg` is None), loaded
    by path as --config loads it, so config files can build on each other."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"t5x_like_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)
