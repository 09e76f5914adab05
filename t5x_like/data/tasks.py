"""What a pipeline makes of the text: the training task and its row lengths, read from config.

    task = Task.from_config(cfg.data)       # data.task, data.inputs_len, ...
    it = pipeline.make_train_iterator(source, vocab, task=task, batch_size=..., seed=...)

`causal_lm` rows are decoder-only (`pipeline.KEYS`, length `seq_len`); `span_corruption`,
`prefix_lm` and `seq2seq` rows are encoder-decoder (`packing.ENCDEC_KEYS`, lengths `inputs_len`
and `targets_len`). Every inconsistency is a `ValueError` naming the `data.<field>` to change.
"""

import dataclasses
import numbers
from typing import Any

from t5x_like.data import span_corruption

TASKS = ("causal_lm", "span_corruption", "prefix_lm", "seq2seq")
ENCODER_DECODER_TASKS = ("span_corruption", "prefix_lm", "seq2seq")


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
    def is_encoder_decoder(self) -> bool:
        """Whether rows are encoder-decoder (`packing.ENCDEC_KEYS`) rather than decoder-only."""
        return self.name in ENCODER_DECODER_TASKS

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
