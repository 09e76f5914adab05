"""An SFT run (data.task='sft' on a JSONL directory, packed rows) stopped after a checkpoint and
resumed continues with exactly the batches and losses of an uninterrupted run."""

import json

from testutil import tiny_config

from t5x_like.experiment import trainer
from t5x_like.training.metrics_writer import read_metrics

PAIRS = [
    {"prompt": f"Q: what is {a} plus {b}? A:", "completion": f" {a + b}"}
    for a in range(3)
    for b in range(4)
]


def _config(data, corpus_dir, steps):
    return tiny_config(
        **{
            "data.task": "sft",
            "data.dataset": str(data),
            "data.vocab_dataset": "t5x_like_corpus",
            "data.data_dir": corpus_dir,
            "data.vocab_size": 256,
            "data.seq_len": 32,
            "data.num_shards": 2,
            "model.vocab_size": None,
            "model.num_layers": 1,
            "train.steps": steps,
            "train.checkpoint_every": 3,
            "optimizer.schedule": "constant",
        }
    )


def test_sft_run_resumes_exactly(corpus_dir, tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    trainer.train(_config(data, corpus_dir, 6), full)
    trainer.train(_config(data, corpus_dir, 3), resumed)  # stops after checkpoint 3
    assert sorted(read_metrics(resumed, "train")) == [1, 2, 3]
    trainer.train(_config(data, corpus_dir, 6), resumed)  # resumes from it
    expected, got = read_metrics(full, "train"), read_metrics(resumed, "train")
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert got[step]["loss"] == expected[step]["loss"], step  # bit-identical on CPU
        assert got[step]["tokens"] == expected[step]["tokens"], step
