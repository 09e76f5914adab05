"""Task: defaults, reading a config's data section, and errors naming the field to fix."""

import dataclasses

import numpy as np
import pytest
from ml_collections import config_dict

from t5x_like.data import packing, span_corruption, tasks
from t5x_like.data.tasks import Task


def _data(**fields) -> config_dict.ConfigDict:
    return config_dict.ConfigDict(fields)


def test_from_config_reads_every_field():
    cfg = _data(
        task="seq2seq",
        seq_len=128,
        inputs_len=64,
        targets_len=16,
        noise_density=0.2,
        mean_noise_span_length=2.0,
        text_key="body",
        inputs_key="body",
        targets_key="summary",
        inputs_prefix="summarize: ",
        dataset="ignored",
    )
    task = Task.from_config(cfg)
    assert task == Task(
        "seq2seq",
        seq_len=128,
        inputs_len=64,
        targets_len=16,
        noise_density=0.2,
        mean_noise_span_length=2.0,
        text_key="body",
        inputs_key="body",
        targets_key="summary",
        inputs_prefix="summarize: ",
    )
    assert task.is_encoder_decoder


def test_from_config_defaults_missing_and_unset_fields():
    """A decoder-only config (no task field) is the causal LM; placeholders take defaults."""
    task = Task.from_config(_data(seq_len=32, text_key="text"))
    assert task == Task("causal_lm", seq_len=32)
    assert not task.is_encoder_decoder
    cfg = _data(task="span_corruption", inputs_len=64, targets_len=16)
    cfg.noise_density = config_dict.placeholder(float)
    task = Task.from_config(cfg)
    assert task.noise_density == 0.15 and task.mean_noise_span_length == 3.0
    assert task.text_key == "text" and task.inputs_prefix == ""


def test_tasks_and_encoder_decoder_property():
    paired = {"span_corruption", "prefix_lm", "seq2seq"}
    assert set(tasks.TASKS) == paired | {
        "causal_lm",
        "sft",
        "mlm",
        "classification",
        "token_classification",
        "question_answering",
    }
    lengths = dict(seq_len=128, inputs_len=32, targets_len=16)
    for name in tasks.TASKS:
        assert Task(name, **lengths).is_encoder_decoder == (name in paired), name


def test_features_row_lengths_and_longest_row():
    causal = Task("causal_lm", seq_len=8)
    assert causal.features == dict.fromkeys(packing.KEYS, 8)
    assert causal.longest_row == (8, "data.seq_len")
    seq2seq = Task("seq2seq", inputs_len=32, targets_len=16)
    assert list(seq2seq.features) == list(packing.ENCDEC_KEYS)
    assert {k: n for k, n in seq2seq.features.items() if n == 32} == {
        "encoder_inputs": 32,
        "encoder_segment_ids": 32,
        "encoder_positions": 32,
    }
    assert seq2seq.longest_row == (32, "data.inputs_len")
    assert Task("prefix_lm", inputs_len=8, targets_len=9).longest_row == (9, "data.targets_len")


def test_features_from_sides_make_the_task_rows():
    tokens, ones, positions = np.array([[5, 6, 7]]), np.ones((1, 3)), np.array([[0, 1, 2]])
    rows = Task("causal_lm", seq_len=3).features_from_sides({"decoder": (tokens, ones, positions)})
    assert set(rows) == set(packing.KEYS)
    np.testing.assert_array_equal(rows["inputs"], [[0, 5, 6]])
    np.testing.assert_array_equal(rows["weights"], [[1.0, 1.0, 1.0]])
    encoder = (np.array([[9, 8]]), np.ones((1, 2)), np.array([[0, 1]]))
    rows = Task("seq2seq", inputs_len=2, targets_len=3).features_from_sides(
        {"encoder": encoder, "decoder": (tokens, ones, positions)}
    )
    assert set(rows) == set(packing.ENCDEC_KEYS)
    np.testing.assert_array_equal(rows["encoder_inputs"], [[9, 8]])
    np.testing.assert_array_equal(rows["decoder_inputs"], [[0, 5, 6]])


def test_task_is_frozen():
    task = Task("causal_lm", seq_len=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.seq_len = 16


def test_span_lengths_and_max_noise_spans():
    task = Task("span_corruption", inputs_len=512, targets_len=114)
    assert task.span_lengths == span_corruption.random_spans_helper(512) == (568, 114)
    assert task.max_noise_spans == 28  # round(round(568 * 0.15) / 3) = round(85 / 3).


@pytest.mark.parametrize(
    "fields,pattern",
    [
        (dict(task="mlm_v2", seq_len=8), r"data.task='mlm_v2' is not a task; set it to one of"),
        (dict(task="causal_lm"), r"data.seq_len must be set for data.task='causal_lm'"),
        (dict(seq_len=1), r"data.seq_len must be at least 2"),
        (dict(seq_len=8.0), r"data.seq_len must be at least 2 .* got 8.0"),
        (dict(task="seq2seq", targets_len=8), r"data.inputs_len must be set"),
        (dict(task="seq2seq", inputs_len=8), r"data.targets_len must be set"),
        (dict(task="seq2seq", inputs_len=1, targets_len=8), r"data.inputs_len must be at least 2"),
        (
            dict(task="prefix_lm", inputs_len=8, targets_len=1),
            r"data.targets_len must be at least 2",
        ),
        (
            dict(task="prefix_lm", inputs_len=0, targets_len=8),
            r"data.inputs_len must be at least 1",
        ),
        (
            dict(task="span_corruption", inputs_len=2, targets_len=8),
            r"data.inputs_len=2 is too small for span corruption.*Set data.inputs_len >= 3",
        ),
        (
            dict(task="span_corruption", inputs_len=512, targets_len=100),
            r"data.targets_len=100 is too small .* Set data.targets_len >= 114",
        ),
        (dict(seq_len=8, noise_density=0.0), r"data.noise_density=0.0 must be in \(0, 1\)"),
        (dict(seq_len=8, noise_density=1.0), r"data.noise_density=1.0 must be in \(0, 1\)"),
        (dict(seq_len=8, noise_density="x"), r"data.noise_density must be a number"),
        (dict(seq_len=8, mean_noise_span_length=0.5), r"data.mean_noise_span_length=0.5 must"),
        (dict(seq_len=8, text_key=""), r"data.text_key must be a non-empty string"),
        (dict(seq_len=8, targets_key=3), r"data.targets_key must be a non-empty string"),
        (dict(seq_len=8, inputs_prefix=3), r"data.inputs_prefix must be a string"),
    ],
)
def test_invalid_configs_raise_value_errors_naming_the_field(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        Task.from_config(_data(**fields))
