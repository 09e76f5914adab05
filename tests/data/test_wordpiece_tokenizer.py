"""A BERT WordPiece `tokenizer.json` through our tokenizer interface and the encoder-only
featurization, checked against transformers' BertTokenizerFast on the same directory: ids of
varied strings, the special ids, classification rows (single and pair, truncated), the first
piece of each word carrying its tag, QA answer spans and offsets, and masking by whole words."""

import json
import shutil

import numpy as np
import pytest
import transformers
from bert_wordpiece import save_wordpiece_bert

from t5x_like.data import featurize, mlm, qa_features, vocab

TEXTS = [
    "Return the absolute value of x.",
    "os.path.join(a, b) -- naïve CAFÉ  tabs\tand\nnewlines",
    "ÜBER 123,456.78 héllo!! unbelievably_long_identifier_name",
    "日本語 テキスト and emoji 😀",
    "",
    "   ",
    "[MASK] is a [CLS] token",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_wordpiece_bert(tmp_path_factory.mktemp("wordpiece"))


@pytest.fixture(scope="module")
def ours(bert_dir):
    return vocab.load_tokenizer(str(bert_dir))


@pytest.fixture(scope="module")
def theirs(bert_dir):
    return transformers.BertTokenizerFast.from_pretrained(str(bert_dir))


def test_encode_and_special_ids_equal_transformers(ours, theirs):
    for text in TEXTS:
        assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"], text
    assert (ours.cls_id, ours.sep_id, ours.mask_id, ours.pad_id, ours.unk_id) == (
        theirs.cls_token_id,
        theirs.sep_token_id,
        theirs.mask_token_id,
        theirs.pad_token_id,
        theirs.unk_token_id,
    )
    assert ours.mask_token == "[MASK]" and ours.bos_id is None
    assert ours.eos_id == theirs.sep_token_id  # BERT has no EOS: [SEP] ends a text.
    ids = ours.encode(TEXTS[0])
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


def test_special_tokens_come_from_the_directory(bert_dir, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(bert_dir, renamed)
    config_path = renamed / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["mask_token"] = "[UNK]"  # What the files name wins over the default token.
    config_path.write_text(json.dumps(config))
    (renamed / "special_tokens_map.json").unlink(missing_ok=True)
    assert vocab.load_tokenizer(str(renamed)).mask_id == 1
    config["mask_token"] = "[NOPE]"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mask_token '\[NOPE\]' is not in the tokenizer"):
        vocab.load_tokenizer(str(renamed)).mask_id  # noqa: B018


def test_a_tokenizer_without_bert_specials_says_which_one(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=60, special_tokens=["[UNK]", "[SEP]"])
    tok.train_from_iterator(["a few words of text"] * 3, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"sep_token": "[SEP]"}')
    loaded = vocab.load_tokenizer(str(tmp_path))
    assert loaded.eos_id == 1  # No EOS: the [SEP] the files name ends a text.
    assert loaded.sep_id == 1
    with pytest.raises(ValueError, match=r"has no cls token.*set cls_token in its tokenizer"):
        featurize.SpecialIds.from_vocab(loaded)


def test_classification_rows_equal_transformers(ours, theirs):
    special = featurize.SpecialIds.from_vocab(ours)
    # Single, pair, and pairs truncated on either side and to equal lengths.
    cases = [(TEXTS[0], None), (TEXTS[1], TEXTS[2]), (TEXTS[2] * 3, TEXTS[0])]
    cases += [(TEXTS[0], TEXTS[2] * 2), (TEXTS[2], TEXTS[2]), (TEXTS[1] * 2, None)]
    for text, text_b in cases:
        example = {"text": text, "text_b": text_b, "label": 1}
        row = featurize.classification_row(example, ours.encode, special, 24, None)
        ref = theirs(
            text,
            text_b,
            max_length=24,
            truncation="longest_first",
            padding="max_length",
            return_token_type_ids=True,
        )
        assert row["inputs"].tolist() == ref["input_ids"], (text, text_b)
        assert row["token_type_ids"].tolist() == ref["token_type_ids"]
        assert row["segment_ids"].tolist() == ref["attention_mask"]


def test_tagging_labels_the_first_wordpiece_of_each_word(ours, theirs):
    words = ["Call", "os.path.join()", "unbelievably", "with", "None", "naïvely"]
    tags = list(range(1, len(words) + 1))
    row = featurize.tagging_row(
        {"tokens": words, "tags": tags},
        ours.encode,
        featurize.SpecialIds.from_vocab(ours),
        40,
        None,
    )
    ref = theirs(words, is_split_into_words=True, max_length=40, padding="max_length")
    assert row["inputs"].tolist() == ref["input_ids"]
    word_ids = ref.word_ids()
    first = [i for i, w in enumerate(word_ids) if w is not None and word_ids[i - 1] != w]
    assert np.flatnonzero(row["weights"]).tolist() == first
    assert len(first) == len(words) and len(first) < sum(w is not None for w in word_ids)
    assert row["targets"][first].tolist() == tags
    assert featurize.word_predictions(row["weights"], row["targets"]) == tags


def test_qa_answer_spans_and_offsets_are_wordpieces(ours, theirs):
    context = "The json module encodes objects. Its loads() parses text, quickly."
    answer = "parses text"
    example = {
        "id": "q1",
        "question": "What does loads do?",
        "context": context,
        "answers": [{"text": answer, "start": context.index(answer)}],
    }
    special = featurize.SpecialIds.from_vocab(ours)
    [(row, window)] = qa_features.qa_windows(
        example, ours.encode, special, 48, encode_offsets=ours.encode_with_offsets
    )
    ref = theirs(
        example["question"],
        context,
        return_offsets_mapping=True,
        padding="max_length",
        max_length=48,
    )
    assert row["inputs"].tolist() == ref["input_ids"]
    in_context = [s == 1 for s in ref.sequence_ids()]
    expected = [
        tuple(o) if c else (-1, -1) for o, c in zip(ref["offset_mapping"], in_context, strict=True)
    ]
    assert [tuple(o) for o in window.offsets.tolist()] == expected
    s, e = int(row["start_positions"][0]), int(row["end_positions"][0])
    assert context[window.offsets[s][0] : window.offsets[e][1]] == answer
    # Without token offsets, spans are whole words: "loads()" and "text," keep their marks.
    [(_, words)] = qa_features.qa_windows(example, ours.encode, special, 48)
    span = context[words.offsets[s][0] : words.offsets[e][1]]
    assert span == "parses text,"


def test_masking_reads_wordpiece_word_starts(ours):
    mlm_vocab = mlm.MlmVocab.from_vocab(ours)
    assert (mlm_vocab.cls_id, mlm_vocab.sep_id, mlm_vocab.mask_id) == (2, 3, 4)
    assert mlm_vocab.random_ids == (5, ours.vocab_size)  # After [PAD] [UNK] [CLS] [SEP] [MASK].
    ids = np.array(ours.encode("unbelievably naïvely parses os.path.join"))
    pieces = [ours.id_to_piece(i) for i in ids]
    assert mlm_vocab.word_start[ids].tolist() == [not p.startswith("##") for p in pieces]
    words = mlm._words(ids, np.ones(len(ids), bool), mlm_vocab.word_start)
    first_word = len(ours.encode("unbelievably"))
    assert first_word > 1 and words[0].tolist() == list(range(first_word))
    rng = np.random.default_rng(0)
    _, _, weights = mlm.mask_tokens(
        ids, np.ones(len(ids), bool), rng, mlm_vocab, rate=0.3, whole_word=True
    )
    for word in words:  # Whole words: every piece of a word selected, or none.
        assert len(set(weights[word].tolist())) == 1
