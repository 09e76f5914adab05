"""What a pipeline makes of the text: the training task and its row lengths, read from config.

    task = Task.from_config(cfg.data)       # data.task, data.inputs_len, ...
    it = pipeline.make_train_iterator(source, vocab, task=task, batch_size=..., seed=...)

`causal_lm` rows are decoder-only (`pipeline.KEYS`, length `seq_len`); `span_corruption`,
`prefix_lm` and `seq2seq` rows are encoder-decoder (`packing.ENCDEC_KEYS`, lengths `inputs_len`
and `targets_len`); `mlm` rows are encoder-only (`mlm.ROW_KEYS`, length `seq_len`). Every
inconsistency is a `ValueError` naming the `data.<field>` to change.
"""

import dataclasses
import numbers
from typing import Any

import numpy as np

from t5x_like.data import finetune, mlm, packing, sft, span_corruption


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class Task:
    """A preprocessing task and its lengths; fields mirror the config's `data` section.

    Attributes:
      name: one of TASKS.
      seq_len: tokens per decoder-only row (causal_lm).
      inputs_len, targets_len: encoder / decoder tokens per row (the encoder-decoder tasks).
        For span_corruption, inputs_len decides the raw chunk length
        (`span_corruption.random_spans_helper`) and targets_len must hold that chunk's targets.
      noise_density, mean_noise_span_length: span corruption's noise (T5: 0.15 and 3.0).
      text_key: the records' text feature (causal_lm, span_corruption, prefix_lm).
      inputs_key, targets_key: the records' two text features (seq2seq).
      inputs_prefix: text put before every seq2seq input, e.g. "summarize: ".
      mlm_probability, whole_word_masking, sentence_pair: masked LM (`mlm.py`): the fraction
        of tokens selected, whether whole words are, and the sentence-pair objective
        (none, nsp, sop).
      prompt_key, completion_key, sft_too_long: supervised fine-tuning (`sft.py`): the records'
        prompt and completion features, and what to do with an example longer than seq_len
        (error, truncate, drop).
      doc_stride, max_query_len: question_answering (`qa_features.py`): context tokens
        between window starts, and the question's most tokens.
    """

    name: str = "causal_lm"
    seq_len: int | None = None
    inputs_len: int | None = None
    targets_len: int | None = None
    noise_density: float = span_corruption.DEFAULT_NOISE_DENSITY
    mean_noise_span_length: float = span_corruption.DEFAULT_MEAN_NOISE_SPAN_LENGTH
    text_key: str = "text"
    inputs_key: str = "inputs"
    targets_key: str = "targets"
    inputs_prefix: str = ""
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    sentence_pair: str = "none"
    prompt_key: str = "prompt"
    completion_key: str = "completion"
    sft_too_long: str = "error"
    doc_stride: int = 32
    max_query_len: int = 64

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"data.task={self.name!r} is not a task; set it to one of {TASKS}.")
        density = self.noise_density
        if isinstance(density, bool) or not isinstance(density, (int, float)):
            raise ValueError(f"data.noise_density must be a number, got {density!r}.")
        if not 0 < density < 1:
            raise ValueError(
                f"data.noise_density={density} must be in (0, 1): the fraction of tokens that "
                "span corruption masks (T5 uses 0.15)."
            )
        span = self.mean_noise_span_length
        if isinstance(span, bool) or not isinstance(span, (int, float)) or not span >= 1:
            raise ValueError(
                f"data.mean_noise_span_length={span!r} must be a number >= 1 (T5 uses 3.0)."
            )
        for field in ("text_key", "inputs_key", "targets_key"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ValueError(f"data.{field} must be a non-empty string, got {value!r}.")
        if not isinstance(self.inputs_prefix, str):
            raise ValueError(f"data.inputs_prefix must be a string, got {self.inputs_prefix!r}.")
        if self.name == "causal_lm":
            self._check_length("seq_len", 2, "a token and the next one to predict")
        elif self.name == "mlm":
            self._check_mlm()
        elif self.name == "sft":
            self._check_sft()
        elif self.name in finetune.TASK_KINDS:
            finetune.check_task(self)
        else:
            self._check_length("inputs_len", 1, "one encoder token")
            self._check_length("targets_len", 2, "one target token and EOS")
        if self.name == "seq2seq":
            self._check_length("inputs_len", 2, "one input token and EOS")
        if self.name == "span_corruption":
            self._check_span_corruption()

    def _check_length(self, field: str, minimum: int, why: str) -> None:
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"data.{field} must be set for data.task={self.name!r}.")
        if not _is_int(value) or value < minimum:
            raise ValueError(
                f"data.{field} must be at least {minimum} for data.task={self.name!r} "
                f"({why}), got {value!r}."
            )

    def _check_mlm(self) -> None:
        rate = self.mlm_probability
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise ValueError(
                f"data.mlm_probability={rate!r} must be in (0, 1): the fraction of tokens "
                "masked-LM selects (BERT uses 0.15)."
            )
        if self.sentence_pair not in mlm.SENTENCE_PAIRS:
            raise ValueError(
                f"data.sentence_pair={self.sentence_pair!r} is not supported; choose one of "
                f"{mlm.SENTENCE_PAIRS}."
            )
        if self.sentence_pair == "none":
            self._check_length("seq_len", 3, "[CLS], a token and [SEP]")
        else:
            self._check_length("seq_len", 5, "[CLS] a [SEP] b [SEP]")

    def _check_sft(self) -> None:
        self._check_length("seq_len", 2, "a prompt or completion token and EOS")
        for field in ("prompt_key", "completion_key"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ValueError(f"data.{field} must be a non-empty string, got {value!r}.")
        if self.sft_too_long not in sft.TOO_LONG:
            raise ValueError(
                f"data.sft_too_long={self.sft_too_long!r} must be one of {sft.TOO_LONG}."
            )

    def _check_span_corruption(self) -> None:
        if self.inputs_len < 3:
            raise ValueError(
                f"data.inputs_len={self.inputs_len} is too small for span corruption: the "
                "smallest corrupted chunk (a kept token, a sentinel, EOS) needs 3. Set "
                "data.inputs_len >= 3."
            )
        _, targets_needed = self.span_lengths
        if self.targets_len < targets_needed:
            raise ValueError(
                f"data.targets_len={self.targets_len} is too small for span corruption with "
                f"data.inputs_len={self.inputs_len}, data.noise_density={self.noise_density} "
                f"and data.mean_noise_span_length={self.mean_noise_span_length}: its targets "
                f"need {targets_needed} tokens. Set data.targets_len >= {targets_needed}."
            )

    @property
    def rows(self) -> "RowLayout":
        """How this task's examples are laid out in rows (`TASK_ROWS`)."""
        return TASK_ROWS[self.name]

    @property
    def record_fields(self) -> tuple[str, ...] | None:
        """The record fields this task reads from a dataset (what a user's file must hold);
        None for the fine-tuning tasks, whose labelled files `finetune.py` reads."""
        if self.name == "seq2seq":
            return (self.inputs_key, self.targets_key)
        if self.name == "sft":
            return (self.prompt_key, self.completion_key)
        if self.name in finetune.TASK_KINDS:
            return None
        return (self.text_key,)

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether rows have an encoder side (`packing.ENCDEC_KEYS`), not one sequence."""
        return self.rows is PAIRED_ROWS

    @property
    def features(self) -> dict[str, int]:
        """The rows' features: batch key -> row length (`weights` float32, the rest int32).
        A model family states the keys it reads (`models.ModelFamily.features`)."""
        return self.rows.features(self)

    @property
    def longest_row(self) -> tuple[int, str]:
        """(the longest row length, the `data.<field>` setting it): what a learned position
        table must hold."""
        return self.rows.longest_row(self)

    def features_from_sides(
        self, sides: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Rows of `features` from (tokens, segment_ids, positions) of each side ("decoder":
        the targets; "encoder": the encoder inputs), rows [L] or batches [B, L]."""
        rows = self.rows.features_from_sides(sides)
        return {k: v for k, v in rows.items() if k in self.features}

    def to_rows(self, examples: Any, **packing_args: Any) -> Any:
        """The task's examples (a grain IterDataset) as rows of `features`: packed or padded
        (`packing.to_rows` / `packing.encdec_to_rows`, whose keyword arguments it takes)."""
        return self.rows.to_rows(self, examples, **packing_args)

    @property
    def span_lengths(self) -> tuple[int, int]:
        """span_corruption: (raw tokens per chunk, longest targets) for inputs_len."""
        return span_corruption.random_spans_helper(
            self.inputs_len, self.noise_density, self.mean_noise_span_length
        )

    @property
    def max_noise_spans(self) -> int:
        """span_corruption: the most noise spans (= sentinels) one example can have."""
        tokens_length, _ = self.span_lengths
        return span_corruption.noise_counts(
            tokens_length, self.noise_density, self.mean_noise_span_length
        )[1]

    @classmethod
    def from_config(cls, data_cfg: Any) -> "Task":
        """The Task of a config's `data` section (a ConfigDict or mapping).

        Reads data.task (default "causal_lm"), seq_len, inputs_len, targets_len, noise_density,
        mean_noise_span_length, text_key, inputs_key, targets_key and inputs_prefix; a field
        that is missing or None (an unset placeholder) takes the Task default.
        """
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        config_names = {"name": "task"}
        kwargs = {}
        for field, default in defaults.items():
            key = config_names.get(field, field)
            value = data_cfg.get(key, None) if hasattr(data_cfg, "get") else None
            kwargs[field] = default if value is None else value
        return cls(**kwargs)


class RowLayout:
    """How a task's examples fill rows: the features, their lengths and the packing."""

    def features(self, task: Task) -> dict[str, int]:
        raise NotImplementedError

    def longest_row(self, task: Task) -> tuple[int, str]:
        raise NotImplementedError

    def features_from_sides(self, sides: dict[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def to_rows(self, task: Task, examples: Any, **packing_args: Any) -> Any:
        raise NotImplementedError


class _SequenceRows(RowLayout):
    """One token sequence per row (`packing.KEYS`), `data.seq_len` long."""

    def features(self, task: Task) -> dict[str, int]:
        return dict.fromkeys(packing.KEYS, task.seq_len)

    def longest_row(self, task: Task) -> tuple[int, str]:
        return task.seq_len, "data.seq_len"

    def features_from_sides(self, sides: dict[str, Any]) -> dict[str, np.ndarray]:
        return packing.decoder_only_features(sides["decoder"])

    def to_rows(self, task: Task, examples: Any, **packing_args: Any) -> Any:
        return packing.to_rows(examples, task.seq_len, **packing_args)


class _SFTRows(_SequenceRows):
    """Causal-LM rows whose `weights` cover the completions only (the examples' `loss_mask`)."""

    def to_rows(self, task: Task, examples: Any, **packing_args: Any) -> Any:
        return packing.to_rows(examples, task.seq_len, loss_mask=True, **packing_args)


class _PairedRows(RowLayout):
    """An input sequence and a target sequence per row (`packing.ENCDEC_KEYS`),
    `data.inputs_len` and `data.targets_len` long."""

    def features(self, task: Task) -> dict[str, int]:
        return {
            k: task.inputs_len if k.startswith("encoder_") else task.targets_len
            for k in packing.ENCDEC_KEYS
        }

    def longest_row(self, task: Task) -> tuple[int, str]:
        longest = max(task.inputs_len, task.targets_len)
        return longest, "data.inputs_len" if longest == task.inputs_len else "data.targets_len"

    def features_from_sides(self, sides: dict[str, Any]) -> dict[str, np.ndarray]:
        return packing.encoder_decoder_features(sides["encoder"], sides["decoder"])

    def to_rows(self, task: Task, examples: Any, **packing_args: Any) -> Any:
        return packing.encdec_to_rows(examples, task.inputs_len, task.targets_len, **packing_args)


class _EncoderRows(RowLayout):
    """Encoder-only masked-LM rows (`mlm.ROW_KEYS`, plus `nsp_label` [1] with sentence pairs),
    `data.seq_len` long."""

    def features(self, task: Task) -> dict[str, int]:
        return mlm.row_features(task.seq_len, task.sentence_pair)

    def longest_row(self, task: Task) -> tuple[int, str]:
        return task.seq_len, "data.seq_len"

    def features_from_sides(self, sides: dict[str, Any]) -> dict[str, np.ndarray]:
        # With an nsp_label; Task.features_from_sides keeps it only if the task has pairs.
        return mlm.features_from_sides(sides, "nsp")

    def to_rows(self, task: Task, examples: Any, **packing_args: Any) -> Any:
        return mlm.to_rows(examples, task.seq_len, task.sentence_pair, **packing_args)


class _FinetuneRows(RowLayout):
    """Encoder-only fine-tuning rows (`finetune.row_features`), `data.seq_len` long, one
    labelled example each (a QA example: one per window); never packed."""

    def features(self, task: Task) -> dict[str, int]:
        return finetune.row_features(task)

    def longest_row(self, task: Task) -> tuple[int, str]:
        return task.seq_len, "data.seq_len"

    def to_rows(self, task: Task, examples: Any, **packing_args: Any) -> Any:
        return examples  # finetune.examples already makes padded rows.


SEQUENCE_ROWS, PAIRED_ROWS, ENCODER_ROWS = _SequenceRows(), _PairedRows(), _EncoderRows()
# The row layout of each task: a new task names its layout here (or adds one above).
TASK_ROWS: dict[str, RowLayout] = {
    "causal_lm": SEQUENCE_ROWS,
    "span_corruption": PAIRED_ROWS,
    "prefix_lm": PAIRED_ROWS,
    "seq2seq": PAIRED_ROWS,
    "mlm": ENCODER_ROWS,
    "sft": _SFTRows(),
    "classification": _FinetuneRows(),
    "token_classification": _FinetuneRows(),
    "question_answering": _FinetuneRows(),
}
TASKS = tuple(TASK_ROWS)
