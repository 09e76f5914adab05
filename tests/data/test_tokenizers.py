"""The tokenizer interface: HF tokenizer.json (byte-level BPE, WordPiece, Unigram) against
transformers' own tokenizer on the same files, LLaMA-convention SentencePiece against
sentencepiece, special ids read from the model directory, and one-line errors for bad files.

Every tokenizer is trained in the test on a few sentences; nothing is downloaded.
"""

import io
import json
import pickle
import random

import pytest
import sentencepiece as spm
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from t5x_like.data import tokenizers, vocab

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "Numbers: 0 1 2 3 42 1000 3.14159 -7",
    "Unicode: café naïve Zürich Ærø smörgåsbord 東京 北京 Καλημέρα привет",
    "Emoji 😀 🚀 🎉 and    whitespace\truns\n\nnew lines.",
    "def f(x):\n    return x ** 2  # code",
] * 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def varied_strings(n: int = 300) -> list[str]:
    """`n` strings mixing words, digits, Unicode, emoji and runs of whitespace."""
    rng = random.Random(0)
    atoms = (
        "the fox dog box jumps over lazy Quick BROWN café naïve Zürich 東京 Καλημέρα привет "
        "😀 🚀 🎉 0 7 42 1000 3.14 -5 ( ) , . ! ? : ; ' \" # @ return def x**2 über"
    ).split()
    spaces = [" ", " ", " ", "  ", "\t", "\n", "   ", " \n "]
    out = ["", " ", "a", "  leading", "trailing  ", "\n\n", "😀😀"]
    while len(out) < n:
        words = [rng.choice(atoms) for _ in range(rng.randint(1, 12))]
        out.append("".join(w + rng.choice(spaces) for w in words).rstrip(rng.choice(["", " "])))
    return out


def _write_dir(tmp_path, tok: Tokenizer, config: dict, extra: dict | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for name, data in (extra or {}).items():
        (tmp_path / name).write_text(json.dumps(data))
    return tmp_path


def byte_level_bpe(tmp_path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    # Llama 3's layout: BOS/EOS named by the tokenizer, a second EOS in generation_config.json.
    eot = tok.token_to_id("<|eot_id|>")
    end = tok.token_to_id("<|end_of_text|>")
    return _write_dir(
        tmp_path,
        tok,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        {"generation_config.json": {"bos_token_id": 0, "eos_token_id": [end, eot]}},
    )


def wordpiece(tmp_path):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    )
    tok.train_from_iterator(CORPUS, trainer)
    return _write_dir(
        tmp_path,
        tok,
        {
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "eos_token": "[SEP]",
            "clean_up_tokenization_spaces": True,
        },
    )


def unigram(tmp_path):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    # Token names in special_tokens_map.json only; the pad id from config.json.
    return _write_dir(
        tmp_path,
        tok,
        {},
        {
            "special_tokens_map.json": {"bos_token": {"content": "<s>"}, "eos_token": "</s>"},
            "config.json": {"pad_token_id": 0},
        },
    )


KINDS = {"byte_level_bpe": byte_level_bpe, "wordpiece": wordpiece, "unigram": unigram}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_hf_tokenizer_matches_transformers(kind, tmp_path):
    directory = KINDS[kind](tmp_path)
    ours = vocab.load_tokenizer(directory)
    reference = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert isinstance(ours, tokenizers.HFTokenizer)
    assert isinstance(ours, tokenizers.Tokenizer)
    assert ours.vocab_size == len(reference)
    strings = varied_strings()
    for text in strings:
        ids = ours.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), text
    assert ours.eos_id == reference.eos_token_id
    assert [ours.id_to_piece(i) for i in range(ours.vocab_size)] == (
        reference.convert_ids_to_tokens(list(range(ours.vocab_size)))
    )


def test_special_ids_come_from_the_model_directory(tmp_path):
    bpe = vocab.load_tokenizer(byte_level_bpe(tmp_path / "bpe"))
    bos, end, eot = (bpe.id_to_piece(i) for i in (bpe.bos_id, *bpe.eos_ids))
    assert (bos, end, eot) == ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")
    assert bpe.pad_id == bpe.eos_id  # No pad token: transformers' convention.
    assert bpe.unk_id is None
    assert tokenizers.start_ids(bpe, fallback=0) == [bpe.bos_id]

    wp = vocab.load_tokenizer(wordpiece(tmp_path / "wp") / "tokenizer.json")
    assert (wp.pad_id, wp.unk_id, wp.bos_id) == (0, 1, None)
    assert wp.id_to_piece(wp.eos_id) == "[SEP]"
    assert tokenizers.start_ids(wp, fallback=7) == [7]

    uni = vocab.load_tokenizer(unigram(tmp_path / "uni"))
    assert [uni.id_to_piece(i) for i in (uni.pad_id, uni.bos_id, uni.eos_id, uni.unk_id)] == (
        SPECIALS
    )
    # Decoding stops at EOS and drops pads, as our own vocabularies do.
    hello = uni.encode("the fox")
    assert uni.decode([uni.pad_id, *hello, uni.eos_id, *hello]) == "the fox"
    assert pickle.loads(pickle.dumps(uni)).encode("the fox") == hello


def _llama_sentencepiece(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 5),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
    )  # SentencePiece's (and LLaMA's) defaults: unk 0, bos 1, eos 2, no pad.
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    return tmp_path


def test_llama_convention_sentencepiece(tmp_path):
    directory = _llama_sentencepiece(tmp_path)
    ours = vocab.load_tokenizer(directory)
    assert isinstance(ours, tokenizers.SentencePieceTokenizer)
    assert (ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id) == (0, 1, 2, 2)
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    for text in varied_strings(200):
        ids = ours.encode(text)
        assert ids == sp.encode(text), text
        assert ours.decode(ids) == sp.decode(ids), text
    # The pipeline's loader takes it too (data.vocab_path), and our own vocabularies stay ours.
    loaded = vocab.load_or_train_vocab(
        str(directory / "tokenizer.model"), data_dir=None, dataset_name="unused", vocab_size=1
    )
    assert isinstance(loaded, tokenizers.SentencePieceTokenizer)
    own = tmp_path / "own.model"
    own.write_bytes(vocab.train_sentencepiece(CORPUS * 5, vocab_size=100, max_chars=10**6))
    assert isinstance(vocab.load_tokenizer(own), vocab.SentencePieceVocab)
    assert tokenizers.start_ids(vocab.load_tokenizer(own), fallback=0) == [0]


def test_bad_files_give_one_line_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        vocab.load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a valid tokenizer.json") as info:
        vocab.load_tokenizer(tmp_path)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)

    directory = unigram(tmp_path / "uni")
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<nope>"}')
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<nope>' is not in"):
        vocab.load_tokenizer(directory)
    (directory / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"tokenizer_config.json is not valid JSON"):
        vocab.load_tokenizer(directory)

    no_eos = wordpiece(tmp_path / "wp")
    (no_eos / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no EOS token: set eos_token"):
        vocab.load_tokenizer(no_eos)
    with pytest.raises(ValueError, match="T5 sentinels exist only"):
        vocab.load_tokenizer(unigram(tmp_path / "uni2"), extra_ids=3)
