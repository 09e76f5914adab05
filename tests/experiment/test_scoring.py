"""Scoring a workdir's checkpoint (experiment/scoring.py, experiments/score.py): the same
log-likelihoods on an 8-device data x fsdp x tensor mesh as on one device, tasks from JSONL with
one-line errors naming file and line, the built-in tasks, the script end to end."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from testutil import REPO, load_config, tiny_config, tiny_t5_config

from t5x_like import checkpointing
from t5x_like import config as config_lib
from t5x_like.errors import ConfigError
from t5x_like.evaluation import loglikelihood as ll
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import restore, scoring

SMALL = {"model.vocab_size": None, "data.vocab_size": 256, "model.num_layers": 1}
QUESTIONS = [
    {"context": "The list type is", "choices": ["mutable.", "a green frog."], "gold": 0},
    {"context": "Return the value of ", "choices": ["x", "the attribute", "None"], "gold": 1},
    {"context": "", "choices": ["A module.", "Dict keys are unique."], "gold": 1},
]


@pytest.fixture(scope="module")
def run_dir(corpus_dir, tmp_path_factory):
    """A decoder-only workdir (config.json, checkpoint 1 of the initial state): scores need
    no trained weights to be compared."""
    cfg = tiny_config(**SMALL, **{"data.seq_len": 48})
    cfg.data.data_dir = corpus_dir
    workdir = str(tmp_path_factory.mktemp("run"))
    exp = experiment.build_experiment(cfg, jax.devices()[:1])
    config_lib.save_config(exp.cfg, workdir)
    state = experiment.init_state(exp, experiment.state_shardings(exp)[1])
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    checkpointer.save(1, state)
    checkpointer.close()
    return workdir


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "mc.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS) + "\n")
    return str(path)


def _one_device_forward(workdir):
    cfg = load_config("saved_run", workdir)
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    run = restore.restore_run(cfg, workdir, devices=jax.devices()[:1])
    params = jax.device_get(run.params)
    return scoring.module_forward(run.exp.family, run.exp.model, params), run.exp.vocab


@pytest.mark.parametrize("task", ["file", "next_sentence"])
def test_sharded_scores_equal_one_device_scores(run_dir, task_file, task, tmp_path):
    cfg = load_config("saved_run", run_dir)
    cfg.mesh.update(data=2, fsdp=2, tensor=2)
    report = scoring.score_checkpoint(
        cfg,
        run_dir,
        task=task_file if task == "file" else task,
        num_questions=10,
        batch_size=3,  # rounded up to 4, a multiple of data x fsdp
        output=str(tmp_path / "report.json"),
    )
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert report["batch_rows"] == 4 and report["seq_len"] == 48
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    questions = [
        scoring.Question(p["context"], tuple(p["choices"]), p["gold"])
        for p in report["per_question"]
    ]
    if task == "file":
        assert questions == scoring.read_task_jsonl(task_file)
    assert report["questions"] == len(questions) == (3 if task == "file" else 10)
    forward, vocab = _one_device_forward(run_dir)
    for q, result in zip(questions, report["per_question"], strict=True):
        requests = [scoring.encode_pair(vocab, q.context, " " + c) for c in q.choices]
        # One request per batch: nothing packed next to it.
        lls = [scoring.score_requests(forward, [r], 48, 1).loglikelihoods[0] for r in requests]
        np.testing.assert_allclose(result["loglikelihoods"], lls, atol=1e-4, rtol=0)
        assert result["acc"] == ll.multiple_choice_metrics(lls, q.choices, q.gold)["acc"]
    assert 0 <= report["metrics"]["acc"] <= 1 and report["rows"] < report["choices"]


def test_rolling_task_report(run_dir, tmp_path):
    cfg = load_config("saved_run", run_dir)
    report = scoring.score_checkpoint(
        cfg, run_dir, task="rolling", num_documents=3, seq_len=16, output=str(tmp_path / "r.json")
    )
    assert report["documents"] == 3 and report["windows"] > 3
    total, metrics = sum(report["loglikelihoods"]), report["metrics"]
    assert metrics["loglikelihood"] == pytest.approx(total)
    assert metrics["token_perplexity"] == pytest.approx(np.exp(-total / report["tokens"]))
    # Untrained: about uniform over the 256-piece vocabulary.
    assert 100 < metrics["token_perplexity"] < 1000


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"mc.jsonl:2: not valid JSON"),
        ('["a"]', r"mc.jsonl:2: expected an object"),
        ('{"context": 3, "choices": ["a", "b"], "gold": 0}', r"mc.jsonl:2: 'context' must be"),
        ('{"context": "c", "choices": ["a"], "gold": 0}', r"mc.jsonl:2: 'choices' must be"),
        ('{"context": "c", "choices": ["a", ""], "gold": 0}', r"mc.jsonl:2: 'choices' must be"),
        ('{"context": "c", "choices": ["a", "b"], "gold": "a"}', r"mc.jsonl:2: 'gold' must be"),
        ('{"context": "c", "choices": ["a", "b"], "gold": 2}', r"mc.jsonl:2: gold=2 is not"),
    ],
)
def test_malformed_task_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as e:
        scoring.read_task_jsonl(str(path))
    assert "\n" not in str(e.value)


def test_missing_task_file_names_the_builtin_tasks(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"next_sentance does not exist.*'next_sentence'"):
        scoring.read_task_jsonl(str(tmp_path / "next_sentance"))


def test_next_sentence_task_is_deterministic_and_true():
    texts = [
        "First sentence of doc one is here. Second sentence of doc one follows it. Third one.",
        "Doc two opens with this line. Then doc two goes on and on. And it ends right here.",
        "A third document is also present. It has two sentences in total here.",
    ]
    a = scoring.next_sentence_task(texts, 3, num_choices=3, seed=1)
    assert a == scoring.next_sentence_task(texts, 3, num_choices=3, seed=1)
    assert a[0].context == "First sentence of doc one is here."
    assert a[0].choices[a[0].gold] == "Second sentence of doc one follows it."
    assert all(len(set(q.choices)) == 3 for q in a)
    # 4 consecutive pairs of sentences of 20-200 characters ("Third one." is too short).
    assert len(scoring.next_sentence_task(texts, 4, num_choices=3)) == 4
    with pytest.raises(ValueError, match="only 4 next-sentence questions"):
        scoring.next_sentence_task(texts, 5, num_choices=3)


def test_encoder_decoder_run_is_refused():
    exp = experiment.assemble_experiment(tiny_t5_config(), devices=jax.devices()[:1])
    run = restore.RestoredRun(exp, None, None, 0, "", "")
    with pytest.raises(ConfigError, match="needs a decoder-only run"):
        scoring.check_scorable(run)


def test_score_script_end_to_end(run_dir, task_file, tmp_path):
    output = tmp_path / "out.json"
    cmd = [sys.executable, str(REPO / "experiments" / "score.py"), f"--workdir={run_dir}"]
    proc = subprocess.run(
        [*cmd, f"--task={task_file}", f"--output={output}", "--config.mesh.tensor=2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["questions"] == 3 and report["mesh"]["tensor"] == 2
    assert f"report: {output}" in proc.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(QUESTIONS[0]) + '\n{"context": "x", "choices": ["a"]}\n')
    proc = subprocess.run(
        [*cmd, f"--task={bad}"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: {bad}:2: 'choices' must be")
