"""`convert_checkpoint --to_hf` of a run trained with the default decoder-only config and our
own SentencePiece vocabulary: the default config exports (its scaled tied head folded into the
final norm) to a LlamaForCausalLM whose logits equal ours, and the export carries tokenizer files
that `AutoTokenizer` loads and that encode text as our vocabulary does.
"""

import os

import jax
import numpy as np
import pytest
import transformers
from interop import decoder_parity as parity
from testutil import corpus_config, load_script

from t5x_like import checkpointing
from t5x_like import config as config_lib
from t5x_like.data import sources, vocab
from t5x_like.experiment import assembly as experiment
from t5x_like.layers.config import TransformerConfig

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\tand\nnewlines  ",
    "Digits 0123456789 and 3.14159; unicode: café, naïve, straße, 東京, emoji 😀.",
    "",
    "UPPER lower MiXeD",
]


@pytest.fixture(scope="module")
def run(corpus_dir, tmp_path_factory):
    """A workdir of the default decoder-only config (tiny sizes) on the embedded corpus, with
    its vocabulary trained there: config.json and a step-0 checkpoint of its initial state (a
    trained one exports alike, and costs a train-step compilation more)."""
    cfg = corpus_config(corpus_dir)
    assert cfg.model.tie_embeddings and cfg.model.scale_tied_logits  # the defaults
    assert not cfg.data.vocab_path  # trained on the corpus and cached under data_dir
    workdir = str(tmp_path_factory.mktemp("default_run"))
    exp = experiment.build_experiment(cfg, jax.devices())
    state = experiment.init_state(exp, experiment.state_shardings(exp)[1])
    config_lib.save_config(exp.cfg, workdir)
    writer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        writer.save(0, state)
    finally:
        writer.close()
    return workdir, exp.cfg, jax.device_get(state.params)


def test_default_config_exports_with_tokenizer(run, tmp_path):
    out = tmp_path / "hf"
    arch = load_script("convert_checkpoint").convert_to_hf(run[0], str(out))
    assert arch == "LlamaForCausalLM"
    assert {"tokenizer.json", "tokenizer_config.json", "spiece.model"} <= {
        p.name for p in out.iterdir()
    }

    workdir, cfg, params = run
    config = TransformerConfig.from_config_dict(cfg.model)
    assert config.scale_tied_logits and config.tie_embeddings
    model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    with parity.single_torch_thread():
        theirs = parity.hf_logits(model)
    ours = parity.our_logits(params, config)
    real = parity.batch(config.vocab_size)[1].astype(bool)
    diff = float(np.abs(ours[real] - theirs[real]).max())
    print(f"\ndefault config -> HF Llama: max|logits diff| {diff:.2e}")
    assert diff <= 1e-5

    ours_vocab = vocab.load_or_train_vocab(
        None, data_dir=cfg.data.data_dir, dataset_name=cfg.data.dataset, vocab_size=256
    )
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.bos_token_id is None and model.config.bos_token_id is None
    split = sources.prepare_dataset(cfg.data.dataset, cfg.data.data_dir)["validation"]
    corpus = [sources.record_text(split[i], "text") for i in range(min(100, len(split)))]
    for text in TEXTS + corpus:
        assert tok.encode(text, add_special_tokens=False) == ours_vocab.encode(text), text
        assert tok.encode(text) == [*ours_vocab.encode(text), 1]  # documents end with EOS
        if 2 not in ours_vocab.encode(text):  # unk: HF writes <unk>, SentencePiece " ⁇ "
            assert tok.decode(ours_vocab.encode(text)) == ours_vocab.decode(ours_vocab.encode(text))
