"""The lm-evaluation-harness adapter (tools/lm_eval_adapter.py) driven by `lm_eval.simple_evaluate`
on local task YAMLs over local JSONL files (nothing downloaded): multiple choice, rolling
perplexity and generation give what experiment/scoring.py and experiment/inference.py give."""

import json
import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # Local files only, before `datasets` is imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import jax  # noqa: E402
import lm_eval  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from testutil import tiny_config  # noqa: E402

from t5x_like import checkpointing, decoding  # noqa: E402
from t5x_like import config as config_lib  # noqa: E402
from t5x_like.experiment import assembly as experiment  # noqa: E402
from t5x_like.experiment import inference, scoring  # noqa: E402
from t5x_like.tools import lm_eval_adapter  # noqa: E402

QUESTIONS = [
    {"context": "The list type is", "choices": ["mutable.", "a green frog."], "gold": 0},
    {"context": "Return the value of", "choices": ["x", "the attribute", "None"], "gold": 1},
    {"context": "Keys of a dict", "choices": ["are unique.", "repeat.", "are sorted."], "gold": 0},
]
DOCS = [
    {"text": "Return a new list containing all items from the iterable in ascending order."},
    {"text": "The with statement is used to wrap the execution of a block with methods."},
]
PROMPTS = ["Return the", "A module for"]

TASKS = {
    "t5xl_mc": """
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "t5xl_ppl": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
    "t5xl_gen": """
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


@pytest.fixture(scope="module")
def run_dir(corpus_dir, tmp_path_factory):
    """A decoder-only workdir with a checkpoint of the initial state."""
    cfg = tiny_config(
        **{"model.vocab_size": None, "data.vocab_size": 256, "model.num_layers": 1},
        **{"data.seq_len": 48},
    )
    cfg.data.data_dir = corpus_dir
    workdir = str(tmp_path_factory.mktemp("run"))
    exp = experiment.build_experiment(cfg, jax.devices()[:1])
    config_lib.save_config(exp.cfg, workdir)
    state = experiment.init_state(exp, experiment.state_shardings(exp)[1])
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    checkpointer.save(1, state)
    checkpointer.close()
    return workdir


def _write_tasks(directory, answers):
    data = {
        "t5xl_mc": QUESTIONS,
        "t5xl_ppl": DOCS,
        "t5xl_gen": [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, answers, strict=True)],
    }
    for name, body in TASKS.items():
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in data[name]))
        header = (
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {path}\ntest_split: test\n"
        )
        (directory / f"{name}.yaml").write_text(header + body)


def test_simple_evaluate_matches_our_scoring(run_dir, tmp_path):
    assert get_model("t5x_like") is lm_eval_adapter.T5xLikeLM  # registered by name
    lm = lm_eval_adapter.T5xLikeLM(workdir=run_dir, batch_size=4)
    # Our own generations: the first prompt's is its gold answer, the second's is not.
    config = decoding.DecodeConfig(max_new_tokens=6)
    ours = [g["output"].split(".")[0] for g in inference.generate_text(lm.run, PROMPTS, config)]
    _write_tasks(tmp_path, [ours[0], ours[1] + " never"])
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(TASKS), task_manager=manager, log_samples=True, bootstrap_iters=0
    )
    results = out["results"]

    questions = [scoring.Question(q["context"], tuple(q["choices"]), q["gold"]) for q in QUESTIONS]
    mc = scoring.score_multiple_choice(
        lm._forward, lm.vocab, questions, seq_len=48, batch_rows=lm.batch_rows, delimiter=" "
    )
    assert results["t5xl_mc"]["acc,none"] == pytest.approx(mc["metrics"]["acc"])
    assert results["t5xl_mc"]["acc_norm,none"] == pytest.approx(mc["metrics"]["acc_norm"])
    for sample in out["samples"]["t5xl_mc"]:
        theirs = [r[0][0] for r in sample["resps"]]
        ours_lls = mc["per_question"][sample["doc_id"]]["loglikelihoods"]
        np.testing.assert_allclose(theirs, ours_lls, atol=1e-4, rtol=0)

    rolling = scoring.score_documents(
        lm._forward, lm.vocab, [d["text"] for d in DOCS], seq_len=48, batch_rows=lm.batch_rows
    )
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        expected = rolling["metrics"][metric]
        assert results["t5xl_ppl"][f"{metric},none"] == pytest.approx(expected, rel=1e-5)

    generated = {s["doc_id"]: s["filtered_resps"][0] for s in out["samples"]["t5xl_gen"]}
    assert generated == {0: ours[0], 1: ours[1]}
    assert results["t5xl_gen"]["exact_match,none"] == pytest.approx(0.5)


def test_cut_at_stop_sequences():
    assert lm_eval_adapter._cut("ab. cd\nef", [".", "\n"]) == "ab"
    assert lm_eval_adapter._cut("ab\ncd. ef", [".", "\n"]) == "ab"
    assert lm_eval_adapter._cut("abc", None) == "abc"
    assert lm_eval_adapter._cut("a;b", ";") == "a"
