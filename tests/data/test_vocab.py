"""SentencePiece vocabularies: T5 ids, round trips, sentinels, training, caching and errors."""

import io
import os
import pickle
import random
import shutil

import pytest
import sentencepiece as spm
from conftest import TEST_VOCAB_SIZE

from t5x_like.data import corpus, sources, vocab

WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an which not "
    "have one had but all were when there can more their if will each about how up out them "
    "then many some so these would other into has two like time could no make than first "
    "been its who now people made over did down only way find use may water long little very "
    "after words called just where most know get through back much before go good new write "
    "our used me man too any day same right look think also around another came come work"
).split()


def english_lines(n: int, seed: int) -> list[str]:
    """`n` sentences of common English words, capitalised and full-stopped."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def small_proto() -> bytes:
    return vocab.train_sentencepiece(english_lines(300, seed=0), vocab_size=96, max_chars=10**6)


@pytest.fixture(scope="module")
def corpus_vocab(corpus_dir) -> vocab.SentencePieceVocab:
    return vocab.load_or_train_vocab(
        None, data_dir=corpus_dir, dataset_name=corpus.NAME, vocab_size=TEST_VOCAB_SIZE
    )


def test_special_ids_follow_t5(small_proto, corpus_vocab):
    """pad 0, eos 1, unk 2 and no bos, in the vocab and in the SentencePiece model itself."""
    for v in (vocab.SentencePieceVocab(small_proto), corpus_vocab):
        assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
        sp = spm.SentencePieceProcessor()
        sp.LoadFromSerializedProto(v.model_proto)
        assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
        ids = v.encode("the water was long")
        assert ids and min(ids) > v.unk_id  # Ordinary words: no special or unknown ids.


def test_corpus_vocab_has_the_requested_size(corpus_vocab):
    assert corpus_vocab.sp_vocab_size == corpus_vocab.vocab_size == TEST_VOCAB_SIZE


def test_encode_decode_round_trip_on_english(small_proto, corpus_vocab):
    """Ordinary English text comes back unchanged."""
    small = vocab.SentencePieceVocab(small_proto)
    # Lower case: character_coverage may drop the rarer capitals of the tiny training text.
    for line in english_lines(50, seed=1):
        assert small.decode(small.encode(line.lower())) == line.lower()
    text = "Return a new list containing all items from the iterable in ascending order."
    assert corpus_vocab.decode(corpus_vocab.encode(text)) == text


def test_normalisation_folds_whitespace(small_proto):
    """nmt_nfkc: runs of spaces, tabs and newlines become one space; ends are trimmed."""
    v = vocab.SentencePieceVocab(small_proto)
    assert v.decode(v.encode("  the   water\n\n\twas  long \n")) == "the water was long"


def test_decode_stops_at_eos_and_skips_pads(small_proto):
    v = vocab.SentencePieceVocab(small_proto)
    first, second = v.encode("the water"), v.encode("was long")
    ids = [v.pad_id, *first, v.pad_id, v.pad_id, *second, v.eos_id, *v.encode("after eos")]
    assert v.decode(ids) == "the water was long"
    assert v.decode([v.eos_id, *first]) == ""
    assert v.decode([]) == ""
    assert v.decode([v.pad_id] * 4) == ""


def test_extra_ids_are_counted_down_from_the_top(small_proto):
    """Sentinel i has id vocab_size - 1 - i, above every SentencePiece piece."""
    plain = vocab.SentencePieceVocab(small_proto)
    v = vocab.SentencePieceVocab(small_proto, extra_ids=5)
    assert v.sp_vocab_size == plain.vocab_size == 96
    assert v.vocab_size == 96 + 5
    sentinels = [v.extra_id(i) for i in range(5)]
    assert sentinels == [v.vocab_size - 1 - i for i in range(5)]
    assert min(sentinels) == v.sp_vocab_size
    # Encoding is unchanged by the extra ids.
    assert v.encode("the water was long") == plain.encode("the water was long")


@pytest.mark.parametrize("i", [-1, 5, 100])
def test_extra_id_out_of_range_raises(small_proto, i):
    v = vocab.SentencePieceVocab(small_proto, extra_ids=5)
    with pytest.raises(ValueError, match=f"Sentinel {i} out of range"):
        v.extra_id(i)


def test_negative_extra_ids_raise(small_proto):
    with pytest.raises(ValueError, match="extra_ids"):
        vocab.SentencePieceVocab(small_proto, extra_ids=-1)


def test_decode_renders_sentinels(small_proto):
    """Sentinels print as <extra_id_i> between the decoded text around them."""
    v = vocab.SentencePieceVocab(small_proto, extra_ids=3)
    ids = [v.extra_id(2), *v.encode("the water"), v.extra_id(0), *v.encode("was long")]
    out = v.decode(ids)
    # The word boundary after a sentinel is kept, as T5's tokenizer renders it.
    assert out == "<extra_id_2> the water<extra_id_0> was long"
    assert v.decode([v.extra_id(1)]) == "<extra_id_1>"
    # A sentinel inside a word (no boundary in the next piece) adds no space.
    word = v.encode("understanding")
    assert len(word) > 1
    assert " " not in v.decode([*word[:-1], v.extra_id(0), word[-1]])


def test_encode_with_sentinels_maps_extra_id_text_to_sentinel_ids(small_proto):
    v = vocab.SentencePieceVocab(small_proto, extra_ids=3)
    ids = v.encode_with_sentinels("the water<extra_id_0> was <extra_id_2>")
    assert ids == [*v.encode("the water"), v.extra_id(0), *v.encode(" was "), v.extra_id(2)]
    assert v.decode(ids) == "the water<extra_id_0> was<extra_id_2>"
    with pytest.raises(ValueError, match="Sentinel 5 out of range"):
        v.encode_with_sentinels("<extra_id_5>")
    plain = vocab.SentencePieceVocab(small_proto)
    assert plain.encode_with_sentinels("a <extra_id_0>") == plain.encode("a <extra_id_0>")


def test_decode_maps_ids_outside_the_vocab_to_unk(small_proto):
    """Ids a padded model vocab can sample (>= vocab_size, or negative) decode as unk."""
    v = vocab.SentencePieceVocab(small_proto, extra_ids=2)
    unk = v.decode([v.unk_id])
    assert unk.strip()  # SentencePiece renders unk visibly.
    assert v.decode([v.vocab_size]) == unk
    assert v.decode([v.vocab_size + 1000]) == unk
    assert v.decode([-3]) == unk


def test_training_is_deterministic():
    """The same text and size give byte-identical models."""
    lines = english_lines(200, seed=2)
    a = vocab.train_sentencepiece(lines, vocab_size=80, max_chars=10**6)
    b = vocab.train_sentencepiece(list(lines), vocab_size=80, max_chars=10**6)
    assert a == b
    assert vocab.SentencePieceVocab(a).vocab_size == 80


def test_training_reads_at_most_about_max_chars():
    """Text after the first `max_chars` characters does not affect the model."""
    lines = english_lines(200, seed=3)
    budget = sum(len(line) for line in lines)
    extra = ["Zebra quixotic jazz vexed klutz" * 3] * 200
    a = vocab.train_sentencepiece(lines, vocab_size=80, max_chars=budget)
    b = vocab.train_sentencepiece(lines + extra, vocab_size=80, max_chars=budget)
    assert a == b


def test_vocab_size_too_large_for_the_text_raises():
    with pytest.raises(ValueError, match="Cannot train a 5000-piece") as info:
        vocab.train_sentencepiece(["the water was long"] * 3, vocab_size=5000, max_chars=10**6)
    assert "3 lines" in str(info.value)


def test_no_text_raises():
    with pytest.raises(ValueError, match="No text"):
        vocab.train_sentencepiece(["", "  \n\t "], vocab_size=64, max_chars=10**6)


def test_pickle_round_trip(small_proto):
    """grain workers receive the vocab pickled: it keeps its model, extra ids and path."""
    v = vocab.SentencePieceVocab(small_proto, extra_ids=4, path="/some/where.model")
    w = pickle.loads(pickle.dumps(v))
    assert w.model_proto == small_proto
    assert (w.extra_ids, w.path, w.vocab_size) == (4, "/some/where.model", v.vocab_size)
    text = "the water was long"
    assert w.encode(text) == v.encode(text)
    assert w.decode([*w.encode(text), w.extra_id(3)]) == v.decode([*v.encode(text), v.extra_id(3)])


def test_load_reads_a_model_file(small_proto, tmp_path):
    path = tmp_path / "m.model"
    path.write_bytes(small_proto)
    v = vocab.SentencePieceVocab.load(str(path), extra_ids=2)
    assert v.model_proto == small_proto and v.extra_ids == 2 and v.path == str(path)
    w = vocab.load_or_train_vocab(str(path), data_dir=None, dataset_name="unused", vocab_size=1)
    assert w.model_proto == small_proto


def test_missing_model_path_raises_file_not_found(tmp_path):
    path = str(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match="missing.model"):
        vocab.load_or_train_vocab(path, data_dir=None, dataset_name="unused", vocab_size=64)


@pytest.mark.parametrize("content", [b"definitely not a sentencepiece model", b""])
def test_corrupt_model_file_raises_value_error_naming_the_path(tmp_path, content):
    path = tmp_path / "corrupt.model"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="Not a valid SentencePiece model") as info:
        vocab.SentencePieceVocab.load(str(path))
    assert str(path) in str(info.value)


def test_model_with_other_special_ids_raises_value_error(tmp_path):
    """A model trained with SentencePiece's defaults (unk 0, bos 1, eos 2) is refused."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(english_lines(100, seed=4)),
        model_writer=model,
        vocab_size=64,
        num_threads=1,
        minloglevel=2,
    )
    path = tmp_path / "default_ids.model"
    path.write_bytes(model.getvalue())
    with pytest.raises(ValueError, match=r"\(pad, eos, unk, bos\) ids \(-1, 2, 0, 1\)") as info:
        vocab.SentencePieceVocab.load(str(path))
    assert str(path) in str(info.value)


def test_vocab_cache_path_is_per_dataset_size_and_split():
    """Cached models live under the data dir, one file per (dataset, size, split)."""
    paths = {
        vocab.vocab_cache_path("/d", name, size, split)
        for name in ("lm1b", "c4/en:3.0.1")
        for size in (100, 200)
        for split in ("train", "validation")
    }
    assert len(paths) == 8
    for path in paths:
        assert path.startswith("/d/") and path.endswith(".model")
        assert ":" not in path


def test_load_or_train_vocab_trains_once_and_caches(corpus_dir, tmp_path, monkeypatch):
    """The first call trains on the split and writes the cache; the next loads it unchanged."""
    data_dir = str(tmp_path / "tfds")
    # The prepared corpus without its cached vocabularies.
    shutil.copytree(corpus_dir, data_dir, ignore=shutil.ignore_patterns("*.model"))
    kwargs = dict(
        data_dir=data_dir,
        dataset_name=corpus.NAME,
        split="validation",
        vocab_size=100,
        max_train_chars=30_000,
    )
    cache = vocab.vocab_cache_path(data_dir, corpus.NAME, 100, "validation")
    assert not os.path.exists(cache)

    first = vocab.load_or_train_vocab(None, **kwargs)
    assert os.path.exists(cache)
    with open(cache, "rb") as f:
        assert f.read() == first.model_proto
    assert first.path == cache and first.vocab_size == 100

    # It is the model trained on that split's text, in order, up to max_train_chars.
    source = sources.prepare_dataset(corpus.NAME, data_dir)["validation"]
    texts = [sources.record_text(source[i]) for i in range(len(source))]
    expected = vocab.train_sentencepiece(texts, vocab_size=100, max_chars=30_000)
    assert first.model_proto == expected

    def fail(*args, **kw):
        raise AssertionError("retrained although a cached model exists")

    monkeypatch.setattr(vocab, "train_sentencepiece", fail)
    second = vocab.load_or_train_vocab(None, extra_ids=3, **kwargs)
    assert second.model_proto == first.model_proto
    assert second.path == cache
    assert second.vocab_size == 103
    # The atomic write leaves no temporary file beside the cache.
    assert os.listdir(os.path.dirname(cache)) == [os.path.basename(cache)]
