"""An HF BERT through our tools: a tiny random BertForMaskedLM with a WordPiece tokenizer (both
built and saved in the test) -> `convert_checkpoint --from_hf` -> the workdir's `[MASK]` fills
(`inference.generate_text` and `infer.py --interactive`) equal transformers' top-1 ->
fine-tuning a built-in task from it (`configs/encoder_only_finetune.py:TASK,<workdir>`) starts
from its encoder.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from bert_wordpiece import save_wordpiece_bert
from testutil import load_config, load_script

from t5x_like import decoding
from t5x_like.errors import ConfigError
from t5x_like.experiment import inference, restore, trainer
from t5x_like.training.metrics_writer import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = [
    "Return the [MASK] value of x.",
    "[MASK] a new list; the [MASK] is not changed.",
    "os.path.join() joins one or more path [MASK].",
]


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    """A saved BertForMaskedLM (random, 2 layers) with its WordPiece tokenizer files."""
    directory = save_wordpiece_bert(tmp_path_factory.mktemp("hf_bert"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=600,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,  # Large enough random weights for distinct top-1 predictions.
    )
    transformers.BertForMaskedLM(config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def workdir(hf_bert, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bert_workdir")
    load_script("convert_checkpoint").convert_from_hf(str(hf_bert), str(workdir))
    return workdir


def _hf_top1(directory, prompts):
    """transformers' top-1 id at each [MASK] of each prompt."""
    tok = transformers.BertTokenizerFast.from_pretrained(str(directory))
    model = transformers.BertForMaskedLM.from_pretrained(str(directory)).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids).logits[0]
            out.append(logits[ids[0] == tok.mask_token_id].argmax(-1).tolist())
    return tok, out


def test_converted_bert_fills_masks_as_transformers(hf_bert, workdir):
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["family"] == "encoder_only"
    assert saved["model"]["encoder_head"] == "mlm" and saved["data"]["task"] == "mlm"
    assert saved["data"]["seq_len"] == 64  # The position table's length.
    cfg = load_script("convert_checkpoint").load_workdir_config(str(workdir))
    run = restore.restore_run(cfg, str(workdir))
    results = inference.generate_text(run, PROMPTS, decoding.DecodeConfig())
    tok, expected = _hf_top1(hf_bert, PROMPTS)
    fills = [[tok.decode([i]) for i in ids] for ids in expected]
    assert [r["fills"] for r in results] == fills
    assert len({f for row in fills for f in row}) > 1  # Not one token everywhere.
    first = results[0]
    assert first["output"] == PROMPTS[0].replace("[MASK]", fills[0][0])


def test_finetunes_a_builtin_task_from_the_converted_encoder(
    hf_bert, workdir, corpus_dir, tmp_path
):
    cfg = load_config("encoder_only_finetune", f"docstring_kind,{workdir}")
    assert cfg.train.init_from == str(workdir)
    assert cfg.model.d_model == 32 and cfg.data.vocab_path == str(workdir / "tokenizer")
    cfg.data.update(data_dir=corpus_dir, seq_len=32)
    cfg.train.update(steps=2, batch_size=8, log_every=2, checkpoint_every=2, eval_every=0)
    cfg.train.compilation_cache_dir = ""
    # Steps of ~1e-8 (Adam's step is about the learning rate): the loaded params barely move.
    cfg.optimizer.update(warmup_steps=1, learning_rate=1e-8)
    out = tmp_path / "cls"
    trainer.train(cfg, str(out))
    losses = [m["loss"] for m in read_metrics(str(out)).values()]
    assert losses and np.isfinite(losses).all()
    run = restore.restore_run(
        load_script("convert_checkpoint").load_workdir_config(str(out)), str(out)
    )
    assert run.exp.cfg.model.encoder_head == "classification"
    assert run.exp.cfg.model.num_labels == 5  # docstring_kind's label set.
    hf = transformers.BertForMaskedLM.from_pretrained(str(hf_bert))
    layer = hf.bert.encoder.layer[1]
    pairs = [
        (run.params["embedding"], hf.bert.embeddings.word_embeddings.weight),
        (
            run.params["encoder"]["layers_1"]["mlp"]["wi"]["kernel"],
            layer.intermediate.dense.weight.T,
        ),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), atol=1e-5)
    assert "classifier" in run.params and "mlm_head" not in run.params


def test_infer_interactive_fills_each_line(hf_bert, workdir, tmp_path):
    output = tmp_path / "out.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "experiments", "infer.py"),
            f"--workdir={workdir}",
            "--interactive",
            f"--output={output}",
        ],
        input="\n".join([PROMPTS[0], "", "[MASK] " * 80, PROMPTS[2]]) + "\n",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tok, expected = _hf_top1(hf_bert, [PROMPTS[0], PROMPTS[2]])
    lines = [
        PROMPTS[i].replace("[MASK]", tok.decode(ids))
        for i, ids in zip((0, 2), expected, strict=True)
    ]
    assert result.stdout.splitlines() == lines
    # The over-long line is reported and skipped; the session goes on.
    assert "Error: '[MASK] [MASK]" in result.stderr and "more than data.seq_len" in result.stderr
    assert [json.loads(line)["output"] for line in output.read_text().splitlines()] == lines


def test_a_finetune_source_that_is_no_workdir_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"is no workdir \(it has no config.json\)"):
        load_config("encoder_only_finetune", f"docstring_kind,{tmp_path}")
