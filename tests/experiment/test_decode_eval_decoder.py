"""Decoded-text metrics for decoder-only SFT runs (train.decode_batches, eval.py --decode_batches):
a tiny decoder fitted to a few prompt -> completion pairs reproduces them (exact match 1.0, the
decodes file holding each prompt, completion and prediction); the metrics equal sacrebleu's and
rouge-score's on the same strings; stop strings cut predictions and stop generation; eval.py
runs end to end on the workdir."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from testutil import REPO, load_config, tiny_config

from t5x_like import decoding, models
from t5x_like.data import vocab as vocab_lib
from t5x_like.errors import ConfigError
from t5x_like.experiment import decode_eval, evaluator, trainer
from t5x_like.training.metrics_writer import read_metrics

PAIRS = [
    {"prompt": f"add {a} {b}:", "completion": f" {a + b} is {a} and {b}"}
    for a, b in ((1, 2), (2, 2), (3, 1), (4, 3), (0, 5), (6, 2), (7, 1), (5, 4))
]
STEPS = 80


def _config(data, corpus_dir, **overrides):
    return tiny_config(
        **{
            "data.task": "sft",
            "data.dataset": str(data),
            "data.vocab_dataset": "t5x_like_corpus",
            "data.data_dir": corpus_dir,
            "data.vocab_size": 256,
            "data.seq_len": 32,
            "model.vocab_size": None,
            "model.num_layers": 1,
            "model.d_model": 64,
            "model.mlp_dim": 128,
            "model.dropout_rate": 0.0,
            "train.batch_size": 8,
            "train.steps": STEPS,
            "train.eval_every": STEPS // 2,
            "train.eval_batches": 1,
            "train.decode_batches": 1,
            "train.checkpoint_every": STEPS,
            "train.z_loss": 0.0,
            "optimizer.learning_rate": 1e-2,
            "optimizer.warmup_steps": 10,
            "optimizer.schedule": "constant",
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def sft_run(corpus_dir, tmp_path_factory):
    """A tiny decoder SFT-trained on PAIRS (train = validation), decoded at steps 0, STEPS // 2
    and STEPS."""
    data = tmp_path_factory.mktemp("pairs")
    lines = "".join(json.dumps(p) + "\n" for p in PAIRS)
    (data / "train.jsonl").write_text(lines)
    (data / "validation.jsonl").write_text(lines)
    workdir = str(tmp_path_factory.mktemp("sft_run"))
    trainer.train(_config(data, corpus_dir), workdir)
    return workdir, data


def _records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_sft_decoder_reproduces_its_pairs(sft_run, corpus_dir):
    workdir, _ = sft_run
    evals = read_metrics(workdir, "eval")
    final = evals[STEPS]
    assert final["decode_exact_match"] == 1.0 and final["decode_accuracy"] == 1.0
    assert final["decode_examples"] == len(PAIRS)
    records = _records(os.path.join(workdir, "decodes", f"step_{STEPS}.jsonl"))
    # The vocabulary's rendering of each text (SentencePiece drops a leading space).
    vocab = vocab_lib.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name="t5x_like_corpus", vocab_size=256
    )
    render = lambda text: vocab.decode(vocab.encode(text))  # noqa: E731
    expected = sorted(
        (render(p["prompt"]), render(p["completion"]), render(p["completion"])) for p in PAIRS
    )
    got = sorted((r["inputs"], r["target"], r["prediction"]) for r in records)
    assert got == expected
    assert set(records[0]) == {"inputs", "prediction", "target"}


@pytest.mark.parametrize("step", [0, STEPS // 2, STEPS])
def test_metrics_equal_sacrebleu_and_rouge_score(sft_run, step):
    """At step 0 (untrained: wrong predictions), half-way and at the end, the logged metrics
    are the reference libraries' on the decodes file's strings."""
    workdir, _ = sft_run
    logged = read_metrics(workdir, "eval")[step]
    records = _records(os.path.join(workdir, "decodes", f"step_{step}.jsonl"))
    predictions = [r["prediction"] for r in records]
    references = [r["target"] for r in records]
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score / 100
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = np.mean(
        [
            scorer.score(t, p)["rougeL"].fmeasure
            for p, t in zip(predictions, references, strict=True)
        ]
    )
    exact = np.mean([p == t for p, t in zip(predictions, references, strict=True)])
    assert logged["decode_bleu"] == pytest.approx(bleu, abs=1e-9)
    assert logged["decode_rouge_l"] == pytest.approx(rouge_l, abs=1e-9)
    assert logged["decode_accuracy"] == pytest.approx(exact, abs=1e-9)
    if step == 0:
        assert logged["decode_exact_match"] < 1.0  # The untrained model does not know them.


def _eval_command(*args):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    command = [sys.executable, str(REPO / "experiments" / "eval.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def test_eval_script_decodes_a_decoder_workdir_with_a_stop_string(sft_run, tmp_path):
    """eval.py --decode_batches on the SFT workdir; the stop string ' and' cuts every
    prediction before it (so exact match falls to 0), and the report and decodes say so."""
    workdir, _ = sft_run
    output = str(tmp_path / "report.json")
    result = _eval_command(
        f"--workdir={workdir}",
        "--num_batches=1",
        "--decode_batches=1",
        f"--output={output}",
        "--config.train.decode_stop=(' and',)",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(output))
    assert report["metrics"]["decode_examples"] == len(PAIRS)
    assert report["metrics"]["decode_exact_match"] == 0.0
    records = _records(report["decodes"])
    assert len(records) == len(PAIRS)
    for r in records:
        assert r["prediction"] == r["target"].split(" and")[0], r
    assert "decode_rouge_l" in result.stdout


def test_beam_search_decodes_the_pairs_too(sft_run, tmp_path):
    """train.decode_strategy=beam through evaluate_checkpoint, in-process."""
    workdir, _ = sft_run
    cfg = load_config("saved_run", workdir)
    cfg.train.update(decode_strategy="beam", decode_num_beams=2)
    report = evaluator.evaluate_checkpoint(
        cfg, workdir, num_batches=1, decode_batches=1, output=str(tmp_path / "beam.json")
    )
    assert report["metrics"]["decode_exact_match"] == 1.0
    assert len(_records(report["decodes"])) == len(PAIRS)


def test_stop_ids_end_generation_at_the_sequence():
    """A row that generates a stop sequence ends there: same tokens up to it, pad after."""
    cfg = tiny_config(**{"model.num_layers": 1})
    family = models.get("decoder_only")
    model = family.build(cfg.model)
    boxed = jax.jit(lambda rng: family.init_params(model, rng, 1))(jax.random.PRNGKey(1))
    params = jax.tree.map(lambda x: x.value, boxed, is_leaf=lambda x: hasattr(x, "value"))
    prompts = decoding.left_pad([[5, 9, 3], [7]])
    config = decoding.DecodeConfig(max_new_tokens=10)
    generate = jax.jit(
        lambda params, prompts, config: (
            decoding.generate(model, params, prompts, config, eos_id=None).tokens
        ),
        static_argnums=2,
    )
    free = np.asarray(generate(params, prompts, config))
    stop = tuple(int(t) for t in free[0, 2:4])  # Row 0's third and fourth tokens.
    config = decoding.DecodeConfig(max_new_tokens=10, stop_ids=(stop,))
    tokens = np.asarray(generate(params, prompts, config))
    first = next(i for i in range(1, 10) if tuple(free[0, i - 1 : i + 1]) == stop)
    np.testing.assert_array_equal(tokens[0, : first + 1], free[0, : first + 1])
    assert np.all(tokens[0, first + 1 :] == decoding.PAD_ID)
    # Row 1 stops only if it generates the same pair itself.
    row1 = [i for i in range(1, 10) if tuple(free[1, i - 1 : i + 1]) == stop]
    end = row1[0] + 1 if row1 else 10
    np.testing.assert_array_equal(tokens[1, :end], free[1, :end])


def test_score_is_sacrebleu_and_rouge_score_on_hand_made_strings():
    predictions = ["the cat sat on the mat", "a dog ran far away today", "Hello, world"]
    references = ["the cat sat on a mat", "the dog ran far away", "hello world"]
    scores = decode_eval.score(predictions, references)
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score / 100
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = np.mean(
        [
            scorer.score(t, p)["rougeL"].fmeasure
            for p, t in zip(predictions, references, strict=True)
        ]
    )
    assert 0 < bleu < 1 and 0 < rouge_l < 1
    assert scores == pytest.approx(
        {
            "decode_accuracy": 0.0,
            # Normalised (case, punctuation, articles), two of them match.
            "decode_exact_match": 2 / 3,
            "decode_bleu": bleu,
            "decode_rouge_l": rouge_l,
        },
        abs=1e-12,
    )


def test_cut_at_stop_and_stop_token_ids():
    assert decoding.cut_at_stop("4 is the sum\nof", ("\n", "sum")) == "4 is the "
    assert decoding.cut_at_stop("no stop here", (".",)) == "no stop here"

    class Vocab:  # Token ids of characters; "~" renders as nothing.
        def encode(self, text):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(chr(i) for i in ids).replace("~", "")

    assert decoding.stop_token_ids(Vocab(), ("ab", "~", "ab")) == ((97, 98),)


def test_decoder_decode_batches_need_sft_rows():
    with pytest.raises(ConfigError, match=r"data.task='sft'.*data.task='causal_lm'"):
        evaluator.eval_config(tiny_config(), decode_batches=1)
    evaluator.eval_config(tiny_config(**{"data.task": "sft"}), decode_batches=1)
