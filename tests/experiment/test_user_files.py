"""Training on the user's own files: a causal LM on a .txt file resumes exactly (validation held
out with a split slice; SFT on a JSONL directory: test_sft_resume.py), the vanilla T5 learns a
TSV "translation" (decoded BLEU far above the untrained model's), and a malformed file ends
experiments/train.py with one line naming the file and line."""

import random
import subprocess
import sys

from testutil import REPO, load_config, tiny_config

from t5x_like.experiment import trainer
from t5x_like.training.metrics_writer import read_metrics

WORDS = "the a cat dog sat ran on under mat log big small red old".split()
# A word-for-word cipher: the parallel corpus of the translation test.
SOURCE = "red blue green black white small big old new fast slow cat dog bird fish tree".split()
TARGET = (
    "rouge bleu vert noir blanc petit grand vieux neuf vite lent chat chien oiseau poisson arbre"
).split()


def _text_file(path):
    rng = random.Random(0)
    paragraphs = (
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) for _ in range(2))
        for _ in range(120)
    )
    path.write_text("\n\n".join(paragraphs) + "\n")
    return str(path)


def _config(dataset, data_dir, steps, fields, cache_dir):
    return tiny_config(
        **{
            "data.dataset": dataset,
            "data.data_dir": data_dir,
            "train.compilation_cache_dir": cache_dir,  # The three runs compile once.
            "data.seq_len": 32,
            "data.num_shards": 2,
            # No validation file: the last tenth of the file is held out, deterministically.
            "data.train_split": "train[:90%]",
            "data.eval_split": "train[90%:]",
            "model.vocab_size": None,
            "model.num_layers": 1,
            "train.steps": steps,
            "train.checkpoint_every": 3,
            "train.eval_every": 3,
            "train.eval_batches": 1,
            "train.eval_at_start": False,
            "optimizer.schedule": "constant",
            **fields,
        }
    )


def test_a_causal_lm_run_on_a_text_file_resumes_exactly(tmp_path):
    dataset, data_dir = _text_file(tmp_path / "data.txt"), str(tmp_path / "tfds")
    fields = {"data.task": "causal_lm", "data.vocab_size": 32}  # trained on the file itself
    cache = str(tmp_path / "xla")
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    trainer.train(_config(dataset, data_dir, 6, fields, cache), full)
    trainer.train(_config(dataset, data_dir, 3, fields, cache), resumed)  # stops after step 3
    assert sorted(read_metrics(resumed, "train")) == [1, 2, 3]
    trainer.train(_config(dataset, data_dir, 6, fields, cache), resumed)  # resumes from it
    for split in ("train", "eval"):
        expected, got = read_metrics(full, split), read_metrics(resumed, split)
        assert (
            sorted(got) == sorted(expected) == ([3, 6] if split == "eval" else [1, 2, 3, 4, 5, 6])
        )
        for step in expected:
            assert got[step]["loss"] == expected[step]["loss"], (split, step)  # bit-identical


def _pairs(n, seed):
    rng = random.Random(seed)
    cipher = dict(zip(SOURCE, TARGET, strict=True))
    for _ in range(n):
        words = [rng.choice(SOURCE) for _ in range(rng.randint(3, 6))]
        yield " ".join(words) + "\t" + " ".join(cipher[w] for w in words) + "\n"


def translation_config(data, data_dir, steps):
    """The vanilla Transformer (configs/t5.py:tiny,vanilla, narrowed) on a TSV pairs directory:
    seq2seq, decoded BLEU at the end."""
    cfg = load_config("t5", "tiny,vanilla")
    cfg.data.update(
        task="seq2seq",
        dataset=str(data),
        data_dir=str(data_dir),
        vocab_size=56,
        extra_ids=0,
        inputs_len=16,
        targets_len=16,
    )
    cfg.model.update(vocab_size=None, d_model=64, num_heads=4, head_dim=16, mlp_dim=128)
    cfg.train.update(
        batch_size=32,
        steps=steps,
        eval_every=steps,
        eval_batches=2,
        decode_batches=2,
        checkpoint_every=steps,
        log_every=50,
        compilation_cache_dir="",
    )
    cfg.optimizer.warmup_steps = 20
    return cfg


def test_vanilla_t5_learns_a_tsv_translation(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    (data / "train.tsv").write_text("".join(_pairs(2000, 0)))
    (data / "validation.tsv").write_text("".join(_pairs(64, 1)))
    workdir = str(tmp_path / "run")
    trainer.train(translation_config(data, tmp_path / "tfds", 100), workdir)
    evals = read_metrics(workdir, "eval")
    assert sorted(evals) == [0, 100] and evals[100]["decode_examples"] == 64
    assert evals[0]["decode_bleu"] < 0.05  # untrained
    assert evals[100]["decode_bleu"] > 0.5, evals[100]


def test_a_malformed_file_is_one_line_from_train_py(tmp_path):
    bad = tmp_path / "pairs.tsv"
    bad.write_text("a b\tc d\ne f\n")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "train.py"),
            f"--config={REPO / 'configs' / 't5.py'}:tiny,vanilla",
            f"--workdir={tmp_path / 'run'}",
            "--config.data.task=seq2seq",
            f"--config.data.dataset={bad}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"ERROR (ConfigError): {bad}:2: 1 tab-separated columns where 2 (inputs, targets) are "
        "expected; a TSV field cannot hold a tab."
    )
