"""Labelled data: JSONL/CSV/TSV readers, their one-line errors, TFDS datasets prepared locally,
and the rows (classification, BIO tagging with sub-word alignment, QA windows with a stride)
checked by hand and against Hugging Face's token-classification alignment."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from t5x_like.data import featurize, labelled, qa_features
from t5x_like.data.labelled import Fields

SPECIAL = featurize.SpecialIds(cls=1, sep=2, pad=0, unk=3)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def _jsonl(tmp_path, records, name="data.jsonl"):
    return _write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------- readers
def test_jsonl_classification_labels_inferred_sorted_or_given(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            {"sentence": "bad", "y": "neg"},
            {"sentence": "fine", "y": "pos"},
            {"sentence": "meh", "y": "neg"},
        ],
    )
    data = labelled.read_file(path, "classification", fields=Fields(text="sentence", label="y"))
    assert data.labels == ("neg", "pos")  # Sorted, not in order of appearance.
    assert data.examples[1] == {"text": "fine", "text_b": None, "label": "pos"}
    given = labelled.read_file(
        path, "classification", fields=Fields(text="sentence", label="y"), labels="pos,neg,other"
    )
    assert given.labels == ("pos", "neg", "other") and given.label_ids["neg"] == 1


def test_csv_pairs_tsv_tags_and_csv_answers(tmp_path):
    pairs = _write(tmp_path, "p.csv", 'a,b,label\n"x, y",z,1\nu,v,0\n')
    data = labelled.read_file(pairs, "classification", fields=Fields(text="a", text_b="b"))
    assert data.examples[0] == {"text": "x, y", "text_b": "z", "label": "1"}
    assert data.labels == ("0", "1")

    tags = _write(
        tmp_path, "t.tsv", "tokens\ttags\nJohn lives in New York\tB-PER O O B-LOC I-LOC\n"
    )
    data = labelled.read_file(tags, "tagging")
    assert data.examples == [
        {
            "tokens": ["John", "lives", "in", "New", "York"],
            "tags": ["B-PER", "O", "O", "B-LOC", "I-LOC"],
        }
    ]
    assert data.labels == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")  # O, then by type, B before I.

    answers = json.dumps({"text": ["France"], "answer_start": [12]}).replace('"', '""')
    qa = _write(
        tmp_path,
        "q.csv",
        f'id,question,context,answers\nq1,Where?,Paris is in France.,"{answers}"\n',
    )
    data = labelled.read_file(qa, "qa")
    assert data.examples[0]["answers"] == [{"text": "France", "start": 12}]


def test_jsonl_qa_answer_formats(tmp_path):
    context = "Paris is in France."
    path = _jsonl(
        tmp_path,
        [
            {
                "id": "a",
                "question": "Where?",
                "context": context,
                "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
            },
            {
                "question": "What?",
                "context": context,
                "answers": [{"text": "Paris", "answer_start": 0}],
            },
            {"id": "c", "question": "Who?", "context": context, "answers": []},
        ],
    )
    data = labelled.read_file(path, "qa")
    assert [e["id"] for e in data.examples] == ["a", "1", "c"]  # No id field: the record index.
    assert data.examples[0]["answers"] == [
        {"text": "France", "start": 12},
        {"text": "in France", "start": 9},
    ]
    assert data.examples[2]["answers"] == []


# ----------------------------------------------------------------------------- one-line errors
ERROR_CASES = {
    "missing field": (
        "classification",
        [{"text": "a", "label": "x"}, {"txt": "b", "label": "y"}],
        {},
        r"data\.jsonl line 2: no field 'text' \(it has \['label', 'txt'\]\); set data\.text_key",
    ),
    "missing text_b": (
        "classification",
        [{"text": "a", "label": "x"}],
        {"fields": Fields(text_b="hypothesis")},
        r"line 1: no field 'hypothesis'.*set data\.text_b_key",
    ),
    "unknown label": (
        "classification",
        [{"text": "a", "label": "pos"}, {"text": "b", "label": "neutral"}],
        {"labels": "neg,pos"},
        r"data\.jsonl line 2: label 'neutral' is not in data\.labels \['neg', 'pos'\]; add it",
    ),
    "unknown tag": (
        "tagging",
        [{"tokens": ["a"], "tags": ["B-ORG"]}],
        {"labels": ["O", "B-PER", "I-PER"]},
        r"line 1: label 'B-ORG' is not in data\.labels",
    ),
    "tags misaligned": (
        "tagging",
        [{"tokens": ["John", "lives", "here"], "tags": ["B-PER", "O"]}],
        {},
        r"line 1: 3 tokens but 2 tags; tags do not align with the tokens",
    ),
    "not BIO": (
        "tagging",
        [{"tokens": ["John"], "tags": ["PER"]}],
        {},
        r"line 1: tag 'PER' is not BIO",
    ),
    "answer outside context": (
        "qa",
        [
            {
                "id": "q",
                "question": "?",
                "context": "short",
                "answers": [{"text": "shorter", "answer_start": 0}],
            }
        ],
        {},
        r"line 1: answer 0 \('shorter' at character 0\) lies outside the 5-character context",
    ),
    "answer before context": (
        "qa",
        [
            {
                "id": "q",
                "question": "?",
                "context": "short",
                "answers": [{"text": "s", "answer_start": -1}],
            }
        ],
        {},
        r"lies outside the 5-character context",
    ),
    "answer text mismatch": (
        "qa",
        [
            {
                "id": "q",
                "question": "?",
                "context": "Paris is in France.",
                "answers": [{"text": "France", "answer_start": 11}],
            }
        ],
        {},
        r"line 1: answer 0 is 'France' but the context at characters 11:17 reads ' Franc'",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_records_fail_with_one_line(tmp_path, case):
    kind, records, kwargs, message = ERROR_CASES[case]
    path = _jsonl(tmp_path, records)
    with pytest.raises(ValueError, match=message) as info:
        labelled.read_file(path, kind, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, text",
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n\n"),
        ("empty.csv", ""),
        ("header.tsv", "text\tlabel\n"),
    ],
)
def test_empty_files(tmp_path, name, text):
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=f"{name} has no records; point the data path"):
        labelled.read_file(path, "classification")


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        labelled.read_file(
            _write(tmp_path, "a.jsonl", '{"text": "a", "label": "b"}\n{oops\n'), "classification"
        )
    with pytest.raises(ValueError, match=r"b\.csv line 3: 4 columns where the header has 2"):
        labelled.read_file(
            _write(tmp_path, "b.csv", "text,label\na,b\nc,d,e,f\n"), "classification"
        )
    with pytest.raises(ValueError, match=r"unknown labelled file type '\.txt'; use \.jsonl"):
        labelled.read_file(_write(tmp_path, "c.txt", "x"), "classification")
    with pytest.raises(FileNotFoundError, match="Labelled data file not found"):
        labelled.read_file(str(tmp_path / "missing.jsonl"), "classification")
    with pytest.raises(ValueError, match="kind 'ner' is not one of"):
        labelled.read_file(_write(tmp_path, "d.jsonl", "{}"), "ner")
    with pytest.raises(ValueError, match="data.labels='a,a' must list distinct"):
        labelled.read_file(
            _jsonl(tmp_path, [{"text": "x", "label": "a"}]), "classification", labels="a,a"
        )


# ----------------------------------------------------------------------------- rows
WORDS = {
    "the": [10],
    "film": [11],
    "was": [12],
    "wonderful": [13, 14, 15],
    "plot": [16],
    "thin": [17],
}


def _encode(text):
    return [i for w in text.split() for i in WORDS[w]]


def test_classification_rows_by_hand():
    ids = {"neg": 0, "pos": 1}
    row = featurize.classification_row(
        {"text": "the film", "text_b": "was wonderful", "label": "pos"}, _encode, SPECIAL, 10, ids
    )
    np.testing.assert_array_equal(row["inputs"], [1, 10, 11, 2, 12, 13, 14, 15, 2, 0])
    np.testing.assert_array_equal(row["token_type_ids"], [0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(row["segment_ids"], [1] * 9 + [0])
    np.testing.assert_array_equal(row["positions"], list(range(9)) + [0])
    assert row["label"].tolist() == [1] and row["label"].dtype == np.int32
    assert row["weights"].tolist() == [1.0] and row["weights"].dtype == np.float32
    # Too long: the longer side loses its last tokens first (b: 4 tokens -> 2; then a, b: 2, 2).
    row = featurize.classification_row(
        {"text": "the film", "text_b": "was wonderful plot", "label": "neg"},
        _encode,
        SPECIAL,
        7,
        ids,
    )
    np.testing.assert_array_equal(row["inputs"], [1, 10, 11, 2, 12, 13, 2])
    single = featurize.classification_row(
        {"text": "the plot was thin", "label": "neg"}, _encode, SPECIAL, 5, ids
    )
    np.testing.assert_array_equal(single["inputs"], [1, 10, 16, 12, 2])
    assert single["token_type_ids"].tolist() == [0] * 5


def test_tagging_alignment_by_hand():
    example = {"tokens": ["the", "wonderful", "film", ""], "tags": ["O", "B-X", "O", "B-X"]}
    tag_ids = {"O": 0, "B-X": 1, "I-X": 2}
    row = featurize.tagging_row(example, lambda w: WORDS.get(w, []), SPECIAL, 10, tag_ids)
    # [CLS] the wonder ful ##l film <unk> [SEP] pad pad: a word with no pieces becomes unk.
    np.testing.assert_array_equal(row["inputs"], [1, 10, 13, 14, 15, 11, 3, 2, 0, 0])
    np.testing.assert_array_equal(row["targets"], [0, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["weights"], [0, 1, 1, 0, 0, 1, 1, 0, 0, 0])
    assert featurize.word_predictions(row["weights"], row["targets"]) == [0, 1, 0, 1]
    # Words that do not fit whole are dropped: 6 slots hold the, wonderful (4 pieces), not film.
    short = featurize.tagging_row(example, lambda w: WORDS.get(w, []), SPECIAL, 6, tag_ids)
    np.testing.assert_array_equal(short["inputs"], [1, 10, 13, 14, 15, 2])
    np.testing.assert_array_equal(short["weights"], [0, 1, 1, 0, 0, 0])


def test_tagging_alignment_matches_hugging_face_wordpiece():
    """With a real WordPiece tokenizer, rows equal transformers' token-classification recipe:
    `is_split_into_words`, label on the first piece of each word (word_ids), -100 elsewhere."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    pieces = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "john",
        "play",
        "##ing",
        "##s",
        "in",
        "new",
        "york",
        "foot",
        "##ball",
        ",",
        ".",
    ]
    vocab = {p: i for i, p in enumerate(pieces)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    hf = BertTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )
    words = ["John", "plays", "football,", "in", "New", "York", "zz", "."]
    tags = ["B-PER", "O", "O", "O", "B-LOC", "I-LOC", "O", "O"]
    tag_ids = {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4}
    seq_len = 20
    enc = hf(words, is_split_into_words=True, padding="max_length", max_length=seq_len)
    previous, reference = None, []
    for w in enc.word_ids():
        reference.append(-100 if w is None or w == previous else tag_ids[tags[w]])
        previous = w
    special = featurize.SpecialIds(cls=2, sep=3, pad=0, unk=1)
    encode = lambda text: backend.encode(text, add_special_tokens=False).ids  # noqa: E731
    row = featurize.tagging_row({"tokens": words, "tags": tags}, encode, special, seq_len, tag_ids)
    assert row["inputs"].tolist() == enc["input_ids"]
    assert row["segment_ids"].tolist() == enc["attention_mask"]
    assert row["token_type_ids"].tolist() == enc["token_type_ids"]
    reference = np.array(reference)
    np.testing.assert_array_equal(row["weights"] > 0, reference != -100)
    np.testing.assert_array_equal(row["targets"][reference != -100], reference[reference != -100])
    assert sum(row["weights"]) == len(words)  # "football," is 3 pieces, one label.


def _qa_encode(word):
    table = {
        "red": [10],
        "green": [11],
        "yellow": [12, 13],
        "blue": [14],
        "black": [15],
        "white": [16],
        "q": [5],
    }
    return [i for w in word.split() for i in table[w]]


def test_qa_windows_stride_by_hand():
    context = "red green yellow blue black white"  # Tokens 10 11 12 13 14 15 16.
    example = {
        "id": "e",
        "question": "q q q",
        "context": context,
        "answers": [{"text": "yellow blue", "start": 10}],
    }
    out = qa_features.qa_windows(example, _qa_encode, SPECIAL, 8, doc_stride=2, max_query_len=1)
    # Question cut to 1 token; windows of 8 - 1 - 3 = 4 context tokens from 0, 2, 4.
    rows = [r for r, _ in out]
    meta = [m for _, m in out]
    np.testing.assert_array_equal(rows[0]["inputs"], [1, 5, 2, 10, 11, 12, 13, 2])
    np.testing.assert_array_equal(rows[1]["inputs"], [1, 5, 2, 12, 13, 14, 15, 2])
    np.testing.assert_array_equal(rows[2]["inputs"], [1, 5, 2, 14, 15, 16, 2, 0])
    np.testing.assert_array_equal(rows[1]["token_type_ids"], [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(rows[2]["segment_ids"], [1] * 7 + [0])
    # The answer (tokens 2..4: yellow's two pieces and blue) fits whole in window 1 only.
    assert [(r["start_positions"][0], r["end_positions"][0]) for r in rows] == [
        (0, 0),
        (3, 5),
        (0, 0),
    ]
    assert [m.window for m in meta] == [0, 1, 2] and meta[0].example_id == "e"
    np.testing.assert_array_equal(
        meta[1].offsets, [[-1, -1]] * 3 + [[10, 16], [10, 16], [17, 21], [22, 27], [-1, -1]]
    )
    # Widest context (min(left, right) + 0.01 * window length): tokens 0-2 in window 0,
    # 3-4 in window 1, 5-6 in window 2.
    assert meta[0].max_context.tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    assert meta[1].max_context.tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert meta[2].max_context.tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    # An answer starting mid-word takes the whole word; no answer targets [CLS].
    mid = dict(example, answers=[{"text": "ellow", "start": 11}])
    hit = [
        r
        for r, _ in qa_features.qa_windows(
            mid, _qa_encode, SPECIAL, 8, doc_stride=2, max_query_len=1
        )
    ]
    assert (hit[0]["start_positions"][0], hit[0]["end_positions"][0]) == (5, 6)
    none = dict(example, answers=[])
    assert all(
        r["start_positions"][0] == 0
        for r, _ in qa_features.qa_windows(none, _qa_encode, SPECIAL, 8, doc_stride=2)
    )


def test_qa_dataset_stacks_and_bad_lengths():
    example = {"id": "e", "question": "q", "context": "red green", "answers": []}
    features, windows = qa_features.qa_dataset(
        [example, dict(example, id="f")], _qa_encode, SPECIAL, 8, doc_stride=4
    )
    assert features["inputs"].shape == (2, 8) and features["start_positions"].shape == (2, 1)
    assert [w.example_id for w in windows] == ["e", "f"]
    with pytest.raises(ValueError, match="data.seq_len=4 leaves no room for the context"):
        qa_features.qa_windows(example, _qa_encode, SPECIAL, 4)
    with pytest.raises(ValueError, match=r"data.doc_stride=9 must be in \[1, 4\]"):
        qa_features.qa_windows(example, _qa_encode, SPECIAL, 8, doc_stride=9)


# ----------------------------------------------------------------------------- TFDS
def _builder(name, features, splits, config=None):
    """A TFDS builder class named like the real dataset, built from `splits` in memory."""

    class Local(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls) -> epath.Path:
            # As corpus.EmbeddedCorpus.code_path: TFDS's default needs importlib_resources.
            return epath.Path(__file__)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(rows) for split, rows in splits.items()}

        def _generate_examples(self, rows):
            yield from enumerate(rows)

    Local.name = name
    return Local


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("labelled_tfds"))
    text, f = tfds.features.Text(), tfds.features
    sst2 = _builder(
        "glue",
        {
            "sentence": text,
            "label": f.ClassLabel(names=["negative", "positive"]),
            "idx": f.Scalar(np.int32),
        },
        {
            "train": [
                {"sentence": "a fine film", "label": 1, "idx": 0},
                {"sentence": "dull", "label": 0, "idx": 1},
            ],
            "test": [{"sentence": "unseen", "label": -1, "idx": 0}],
        },
        config="sst2",
    )
    ner = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    conll = _builder(
        "conll2003",
        {
            "tokens": f.Sequence(text),
            "ner": f.Sequence(f.ClassLabel(names=ner)),
            "pos": f.Sequence(text),
        },
        {
            "train": [
                {
                    "tokens": ["John", "lives", "in", "Paris"],
                    "ner": [1, 0, 0, 3],
                    "pos": ["N", "V", "P", "N"],
                }
            ]
        },
    )
    squad = _builder(
        "squad",
        {
            "id": text,
            "title": text,
            "context": text,
            "question": text,
            "answers": f.Sequence({"text": text, "answer_start": f.Scalar(np.int32)}),
        },
        {
            "train": [
                {
                    "id": "s1",
                    "title": "t",
                    "context": "Paris is in France.",
                    "question": "Where?",
                    "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
                }
            ]
        },
        config="v1.1",
    )
    sst2(data_dir=data_dir, config="sst2", file_format="array_record").download_and_prepare()
    conll(data_dir=data_dir, file_format="array_record").download_and_prepare()
    squad(data_dir=data_dir, config="v1.1", file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_glue_sst2(tfds_dir):
    data = labelled.read_tfds("glue/sst2", "train", "classification", data_dir=tfds_dir)
    assert data.labels == ("negative", "positive")  # The ClassLabel's names, in id order.
    assert all(e["text_b"] is None for e in data.examples)
    by_text = {e["text"]: e["label"] for e in data.examples}
    assert by_text == {"a fine film": "positive", "dull": "negative"}
    with pytest.raises(ValueError, match=r"glue/sst2\[test\] record 0: label -1 is not a class"):
        labelled.read_tfds("glue/sst2", "test", "classification", data_dir=tfds_dir)


def test_tfds_conll2003_and_squad(tfds_dir):
    data = labelled.read_tfds("conll2003", "train", "tagging", data_dir=tfds_dir)
    assert data.labels == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    assert data.examples == [
        {"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}
    ]
    qa = labelled.read_tfds("squad", "train", "qa", data_dir=tfds_dir)
    assert qa.examples == [
        {
            "id": "s1",
            "question": "Where?",
            "context": "Paris is in France.",
            "answers": [{"text": "France", "start": 12}, {"text": "in France", "start": 9}],
        }
    ]
    with pytest.raises(
        ValueError, match=r"squad\[train\] record 0: no field 'query'.*data\.question_key"
    ):
        labelled.read_tfds(
            "squad", "train", "qa", data_dir=tfds_dir, fields=Fields(question="query")
        )
    with pytest.raises(FileNotFoundError, match="never downloads"):
        labelled.read_tfds("glue/mrpc", "train", "classification", data_dir=tfds_dir)
