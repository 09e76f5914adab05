"""Decoder-only rows of an imported model start with its tokenizer's BOS: a tiny HF LLaMA with a
byte-level BPE `tokenizer.json` carrying BOS/EOS (built in the test) -> `convert_checkpoint
--from_hf` -> causal_lm rows of a text file start each document with that BOS, and eval.py's
path reports the perplexity that transformers computes on the same tokens (BOS first, EOS last).
Our own SentencePiece vocabulary (no BOS) keeps the pad id 0 as the start token.
"""

import math

import numpy as np
import pytest
import torch
import transformers
from interop import decoder_parity as parity
from testutil import load_config, load_script

from t5x_like.data import pipeline, sources, tasks, vocab
from t5x_like.experiment import evaluator

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "A list is a mutable sequence; a tuple is not.",
    "Numbers 1 2 3 and emoji 😀 are bytes too.",
    "The lazy dog sleeps.",
]
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
SEQ_LEN = 64


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A saved LlamaForCausalLM whose BOS (id 5) is neither pad nor 0, with its tokenizer."""
    directory = tmp_path_factory.mktemp("hf_llama_bos")
    specials = ["<pad>", "<a>", "<b>", "<c>", "<d>", BOS, EOS]
    tok = parity.write_bpe_tokenizer(directory, DOCS * 5, specials, BOS, EOS, pad="<pad>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=0,
    )
    transformers.LlamaForCausalLM(config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "docs.txt"
    path.write_text("\n".join(DOCS) + "\n")
    return path


def _first_batch(tokenizer, text_file, pack: bool) -> dict:
    source = sources.prepare_dataset(str(text_file), sample_by="line")["train"]
    task = tasks.Task("causal_lm", seq_len=SEQ_LEN)
    it = pipeline.make_eval_iterator(source, tokenizer, task=task, batch_size=4, pack=pack)
    return next(iter(it))


def test_rows_start_with_the_tokenizers_bos(hf_dir, text_file):
    tokenizer = vocab.load_tokenizer(hf_dir)
    bos = tokenizer.bos_id
    assert bos == 5 and tokenizer.pad_id == 0
    batch = _first_batch(tokenizer, text_file, pack=True)
    starts = (batch["positions"] == 0) & (batch["segment_ids"] > 0)
    assert starts.sum() == len(DOCS)
    np.testing.assert_array_equal(batch["inputs"][starts], bos)
    # The rest of each document's inputs are its targets shifted right: [BOS, t0, ..., tn-1].
    real = batch["segment_ids"] > 0
    np.testing.assert_array_equal(
        batch["inputs"][real & ~starts], batch["targets"][real][:-1][~starts[real][1:]]
    )


def test_our_sentencepiece_vocab_keeps_the_pad_start(text_file):
    proto = vocab.train_sentencepiece(DOCS * 20, vocab_size=48, max_chars=10**6)
    ours = vocab.SentencePieceVocab(proto)
    assert ours.bos_id is None
    batch = _first_batch(ours, text_file, pack=False)
    np.testing.assert_array_equal(batch["inputs"][:, 0], 0)


def test_eval_perplexity_equals_transformers(hf_dir, text_file, tmp_path):
    """convert_checkpoint --from_hf, then eval.py's evaluation of the text file."""
    workdir = tmp_path / "workdir"
    load_script("convert_checkpoint").convert_from_hf(str(hf_dir), str(workdir))
    cfg = load_config("saved_run", str(workdir))
    cfg.data.dataset = str(text_file)
    cfg.data.text_sample_by = "line"
    cfg.data.seq_len = SEQ_LEN
    cfg.train.batch_size = 8  # the test session's 8 host devices
    report = evaluator.evaluate_checkpoint(cfg, str(workdir), split="train", output=None)

    tok = vocab.load_tokenizer(hf_dir)
    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    nll, count = 0.0, 0
    with parity.single_torch_thread(), torch.no_grad():
        for doc in DOCS:
            ids = torch.tensor([[tok.bos_id, *tok.encode(doc), tok.eos_id]])
            loss = model(input_ids=ids, labels=ids).loss  # mean over the len - 1 predictions
            nll += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    metrics = report["metrics"]
    print(f"\nours {metrics['perplexity']:.6f} vs transformers {math.exp(nll / count):.6f}")
    assert metrics["tokens"] == count
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
