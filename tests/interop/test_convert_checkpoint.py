"""experiments/convert_checkpoint.py through its command line: a tiny HF LLaMA directory (random
weights, a byte-level BPE tokenizer with BOS/EOS, built in the test) -> workdir -> `infer.py`
continues prompts with the same greedy tokens as transformers' `generate()` -> `--to_hf` ->
`from_pretrained` loads the model and `AutoTokenizer` the tokenizer, and both agree with the
original. Bad inputs exit with one line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from interop import decoder_parity as parity
from testutil import load_script
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from t5x_like.data import vocab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A list is a mutable sequence; a tuple is not.",
    "Numbers 1 2 3 and emoji 😀 are bytes too.",
] * 5
PROMPTS = ["The quick brown", "A list is", "fox"]
NEW_TOKENS = 20


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", script), *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        check=False,
    )


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A saved LlamaForCausalLM (GQA, untied) with its tokenizer files."""
    directory = tmp_path_factory.mktemp("hf_llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>",
            }
        )
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,  # The embedding is wider than the tokenizer, as in real checkpoints.
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=1,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    parity.randomise_hf_norms_and_biases(model)
    model.save_pretrained(directory)
    return directory


def _hf_continuations(model, directory) -> list[list[int]]:
    ours = vocab.load_tokenizer(directory)
    out = []
    with parity.single_torch_thread(), torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([[ours.bos_id, *ours.encode(prompt)]])
            new = model.generate(
                ids,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=ours.eos_id,
                pad_token_id=ours.pad_id,
            )[0, ids.shape[1] :].tolist()
            out.append(new[: new.index(ours.eos_id) + 1] if ours.eos_id in new else new)
    return out


def test_hf_dir_to_workdir_to_infer_to_hf(hf_dir, tmp_path, corpus_dir):
    workdir, exported = tmp_path / "workdir", tmp_path / "exported"
    result = _run("convert_checkpoint.py", f"--from_hf={hf_dir}", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "config.json").is_file()
    assert (workdir / "checkpoints" / "0").is_dir()
    assert (workdir / "tokenizer" / "tokenizer.json").is_file()
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["family"] == "decoder_only"
    assert saved["model"]["vocab_size"] == 320 and saved["model"]["num_kv_heads"] == 2

    output = tmp_path / "infer.jsonl"
    args = [f"--prompt={p}" for p in PROMPTS]
    result = _run(
        "infer.py",
        f"--workdir={workdir}",
        *args,
        f"--max_new_tokens={NEW_TOKENS}",
        f"--output={output}",
        f"--config.data.data_dir={corpus_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    reference = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    expected = _hf_continuations(reference, hf_dir)
    assert [r["tokens"] for r in records] == expected
    assert sum(len(t) for t in expected) > 2 * len(PROMPTS)  # Not all stopped at once.
    tok = vocab.load_tokenizer(hf_dir)
    assert [r["output"] for r in records] == [tok.decode(t) for t in expected]

    result = _run("convert_checkpoint.py", f"--workdir={workdir}", f"--to_hf={exported}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LlamaForCausalLM" in result.stdout
    reloaded = transformers.LlamaForCausalLM.from_pretrained(exported).eval()
    with parity.single_torch_thread():
        diff = float(np.abs(parity.hf_logits(reloaded) - parity.hf_logits(reference)).max())
    assert diff == 0.0  # f32 weights, copied exactly both ways.
    assert (reloaded.config.bos_token_id, reloaded.config.eos_token_id) == (
        tok.bos_id,
        tok.eos_id,
    )
    exported_tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    for prompt in PROMPTS:
        assert exported_tok.encode(prompt, add_special_tokens=False) == tok.encode(prompt)


def _script_module():
    return load_script("convert_checkpoint")


def test_bad_inputs_exit_with_one_line(hf_dir, tmp_path):
    result = _run("convert_checkpoint.py", f"--from_hf={tmp_path}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "has no config.json" in result.stderr

    # The other errors, in-process (what main prints after "Error: ").
    script = _script_module()
    bad = tmp_path / "bad_hf"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bart"}))
    with pytest.raises(ValueError, match="model_type 'bart' has no converter"):
        script.convert_from_hf(str(bad), str(tmp_path / "w2"))

    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((hf_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="holds neither tokenizer.json nor tokenizer.model"):
        script.convert_from_hf(str(no_tokenizer), str(tmp_path / "w3"))
