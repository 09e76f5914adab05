"""Supervised fine-tuning data (data/sft.py, data.task='sft'): the loss mask of hand-made
examples, packed rows that keep examples apart, too-long examples (error / truncate / drop,
counted and logged), prompt tokens that never reach the loss, JSONL sources, and a tiny model
that learns a few pairs to a near-zero completion loss through the trainer."""

import json
import logging

import jax
import numpy as np
import pytest
from testutil import tiny_config

from t5x_like import partitioning
from t5x_like.data import jsonl, pipeline, sft, sources
from t5x_like.data import vocab as vocab_lib
from t5x_like.data.tasks import Task
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import trainer
from t5x_like.training.metrics_writer import read_metrics

EOS = 1


class _CharVocab:
    """One id per character: 'a' -> 3, 'b' -> 4, ...; EOS 1."""

    eos_id = EOS

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") + 3 for c in text]


RECORDS = [
    {"prompt": "ab", "completion": "c"},  # prompt 3 4, completion 5 + EOS
    {"prompt": "", "completion": "dd"},  # no prompt
    {"prompt": "bbb", "completion": "a", "other": 1},
]


def test_example_loss_mask_by_hand():
    ex = sft.SFTExamples(_CharVocab(), 8, "prompt", "completion", "error").flat_map(RECORDS[0])
    (ex,) = ex
    assert ex["targets"].tolist() == [3, 4, 5, EOS]
    assert ex["inputs"].tolist() == [0, 3, 4, 5]  # BOS, then the targets shifted
    assert ex["loss_mask"].tolist() == [0, 0, 1, 1]  # the completion and its EOS only
    (ex,) = sft.SFTExamples(_CharVocab(), 8, "prompt", "completion", "error").flat_map(RECORDS[1])
    assert ex["loss_mask"].tolist() == [1, 1, 1]


def _rows(records, seq_len, pack=True, **task_fields):
    task = Task("sft", seq_len=seq_len, **task_fields)
    it = pipeline.make_eval_iterator(records, _CharVocab(), batch_size=2, pack=pack, task=task)
    return next(iter(it))


def test_packed_rows_weights_segments_and_positions():
    batch = _rows(RECORDS, 12)
    assert set(batch) == set(pipeline.KEYS)
    # First fit in record order: all three (4 + 3 + 5 tokens) share row 0.
    row = {k: v[0].tolist() for k, v in batch.items()}
    assert row["targets"] == [3, 4, 5, EOS, 6, 6, EOS, 4, 4, 4, 3, EOS]
    assert row["inputs"] == [0, 3, 4, 5, 0, 6, 6, 0, 4, 4, 4, 3]
    assert row["segment_ids"] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    assert row["positions"] == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]
    assert row["weights"] == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1]
    assert batch["weights"].dtype == np.float32
    assert not batch["weights"][1].any()  # the padding row


def test_padded_rows():
    batch = _rows(RECORDS[:2], 6, pack=False)
    assert batch["targets"][0].tolist() == [3, 4, 5, EOS, 0, 0]
    assert batch["segment_ids"][0].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch["weights"][0].tolist() == [0, 0, 1, 1, 0, 0]
    assert batch["weights"][1].tolist() == [1, 1, 1, 0, 0, 0]


def test_configurable_fields():
    records = [{"q": "ab", "a": "c"}]
    batch = _rows(records, 6, prompt_key="q", completion_key="a")
    assert batch["weights"][0].tolist() == [0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match=r"no prompt field 'prompt' \(data.prompt_key\)"):
        _rows(records, 6)


def test_too_long_is_an_error_by_default():
    with pytest.raises(ValueError, match=r"7 tokens .* exceeds data.seq_len=6.*sft_too_long"):
        _rows([{"prompt": "abcde", "completion": "f"}], 6)


def test_too_long_truncate_and_drop_are_counted_and_logged(caplog):
    long = {"prompt": "abcdefgh", "completion": "ijklmnop"}  # 8 + 9 tokens
    assert sft.fit_lengths(8, 9, 10) == (5, 5)
    assert sft.fit_lengths(2, 9, 10) == (2, 8)
    assert sft.fit_lengths(8, 2, 10) == (8, 2)
    transform = sft.SFTExamples(_CharVocab(), 10, "prompt", "completion", "truncate")
    with caplog.at_level(logging.WARNING):
        (ex,) = transform.flat_map(long)
        transform.flat_map(long)
    assert ex["targets"].tolist() == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # "defgh" + "ijklm"
    assert ex["loss_mask"].tolist() == [0] * 5 + [1] * 5
    assert transform.truncated == 2 and "(2 truncated so far)" in caplog.text
    transform = sft.SFTExamples(_CharVocab(), 10, "prompt", "completion", "drop")
    with caplog.at_level(logging.WARNING):
        assert transform.flat_map(long) == []
    assert transform.dropped == 1 and "(1 dropped so far)" in caplog.text
    assert transform.flat_map(RECORDS[0])  # short ones stay
    batch = _rows([long, RECORDS[0]], 10, sft_too_long="drop")
    assert batch["targets"][0].tolist()[:4] == [3, 4, 5, EOS]
    with pytest.raises(ValueError, match="data.sft_too_long='cut' must be one of"):
        Task("sft", seq_len=8, sft_too_long="cut")


def test_jsonl_source_and_its_errors(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (tmp_path / "validation.jsonl").write_text(json.dumps(RECORDS[0]) + "\n\n")
    splits = sources.prepare_dataset(str(tmp_path))
    assert sorted(splits) == ["train", "validation"] and splits.num_examples("train") == 3
    assert splits["validation"][0] == RECORDS[0] and "test" not in splits
    single = sources.prepare_dataset(str(tmp_path / "train.jsonl"))
    assert list(single) == ["train"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(RECORDS[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        jsonl.read_records(str(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        sources.prepare_dataset(str(tmp_path / "missing.jsonl"))


def _loss_per_token(exp, params, batch):
    """Per-token cross-entropy of the real eval step's loss: the step's sums per position."""
    _, jit_eval = experiment.jit_steps(exp, experiment.state_shardings(exp)[1])
    with partitioning.activate(exp.mesh, exp.rules):
        sums = jit_eval(params, partitioning.global_batch(batch, exp.batch_sharding))
    return {k: float(v) for k, v in jax.device_get(sums).items()}


def test_prompt_tokens_never_contribute_to_the_loss():
    cfg = tiny_config(**{"data.task": "sft", "data.seq_len": 16, "model.vocab_size": 128})
    exp = experiment.assemble_experiment(cfg, devices=jax.devices()[:1])
    state = experiment.init_state(exp, experiment.state_shardings(exp)[1])
    records = [{"prompt": "abcd", "completion": "efg"}, {"prompt": "hij", "completion": "k"}]
    batch = next(
        iter(pipeline.make_eval_iterator(records, _CharVocab(), batch_size=8, task=exp.task))
    )
    base = _loss_per_token(exp, state.params, batch)
    assert base["weight_sum"] == 4 + 2  # completions with their EOS
    changed = {k: v.copy() for k, v in batch.items()}
    prompt = (changed["weights"] == 0) & (changed["segment_ids"] > 0)
    changed["targets"] = np.where(prompt, 77, changed["targets"])  # every prompt target
    assert (changed["targets"] != batch["targets"]).sum() == 7
    assert _loss_per_token(exp, state.params, changed) == base
    # Counter-check: a completion target does change the loss.
    completion = {k: v.copy() for k, v in batch.items()}
    completion["targets"][0, 5] = 77
    assert completion["weights"][0, 5] == 1
    assert _loss_per_token(exp, state.params, completion)["loss_sum"] != base["loss_sum"]


def test_tiny_model_fits_pairs(corpus_dir, tmp_path):
    """experiments/train.py's trainer on a JSONL directory of 4 pairs: the completion loss goes
    to about 0, and the eval counts exactly the completion tokens (with EOS)."""
    pairs = [
        {"prompt": "Q: colour of the sky? A:", "completion": " blue"},
        {"prompt": "Q: two plus two? A:", "completion": " four"},
        {"prompt": "Q: capital of France? A:", "completion": " Paris"},
        {"prompt": "Q: opposite of hot? A:", "completion": " cold"},
    ]
    data = tmp_path / "pairs"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    steps = 80
    cfg = tiny_config(
        **{
            "data.task": "sft",
            "data.dataset": str(data),
            "data.vocab_dataset": "t5x_like_corpus",  # the pretraining vocabulary
            "data.data_dir": corpus_dir,
            "data.vocab_size": 256,
            "data.seq_len": 32,
            "data.num_shards": 1,
            "model.vocab_size": None,
            "model.dropout_rate": 0.0,
            "train.steps": steps,
            "train.log_every": 10,
            "train.eval_every": steps,
            "train.eval_batches": 1,
            "train.checkpoint_every": steps,
            "optimizer.learning_rate": 3e-2,
            "optimizer.schedule": "constant",
            "optimizer.warmup_steps": 10,
        }
    )
    workdir = str(tmp_path / "run")
    trainer.train(cfg, workdir)
    train, evals = read_metrics(workdir, "train"), read_metrics(workdir, "eval")
    curve = {k: round(v["cross_entropy"], 4) for k, v in sorted(train.items())}
    print(f"\nSFT completion cross-entropy by step: {curve}; eval: {evals[steps]}")
    assert train[10]["cross_entropy"] > 2.0 and train[steps]["cross_entropy"] < 0.05
    assert evals[steps]["cross_entropy"] < 0.05 and evals[steps]["accuracy"] == 1.0
    vocab = vocab_lib.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name="t5x_like_corpus", vocab_size=256
    )
    completion_tokens = sum(len(vocab.encode(p["completion"])) + 1 for p in pairs)
    assert evals[steps]["tokens"] == completion_tokens
