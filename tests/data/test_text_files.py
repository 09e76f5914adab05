"""The user's .txt / .jsonl / .tsv files as a dataset (`text_files.py` via
`sources.prepare_dataset`): records, splits and slices, sharded batches that resume exactly, and
one line naming the file and line for every kind of bad input."""

import json

import numpy as np
import pytest

from t5x_like.data import pipeline, sharded_iterator, sources, text_files, vocab
from t5x_like.data.tasks import Task
from t5x_like.errors import ConfigError

TEXT = "one two\nthree\n\n\nfour five\n\nsix\n"


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "sample_by, expected",
    [
        ("paragraph", ["one two\nthree", "four five", "six"]),
        ("line", ["one two", "three", "four five", "six"]),
        ("document", ["one two\nthree\n\n\nfour five\n\nsix"]),
    ],
)
def test_text_file_documents(tmp_path, sample_by, expected):
    path = _write(tmp_path / "book.txt", TEXT)
    splits = sources.prepare_dataset(path, sample_by=sample_by, fields=("text",))
    assert list(splits) == ["train"] and splits["train"] == expected
    # A .txt record is its own text, whatever data.text_key says.
    assert [sources.record_text(r, "body") for r in splits["train"]] == expected


def test_directory_glob_and_split_slices(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "train.txt", "".join(f"doc {i}\n\n" for i in range(10)))
    _write(data / "validation.jsonl", json.dumps({"text": "held out"}) + "\n")
    (data / "notes.md").write_text("ignored")
    splits = sources.prepare_dataset(str(data), fields=("text",))
    assert sorted(splits) == ["train", "validation"] and "test" not in splits
    assert splits["validation"] == [{"text": "held out"}]
    # TFDS slices: a deterministic hold-out whose two parts are the whole split, disjoint.
    head, tail = splits["train[:80%]"], splits["train[80%:]"]
    assert head + tail == splits["train"] and tail == ["doc 8", "doc 9"]
    assert "train[80%:]" in splits and splits.num_examples("train[:3]") == 3
    assert splits["train[:1]+validation"] == ["doc 0", {"text": "held out"}]
    _write(tmp_path / "b.txt", "b\n")
    _write(tmp_path / "a.txt", "a\n")
    assert sources.prepare_dataset(str(tmp_path / "*.txt"))["train"] == ["a", "b"]


def test_tsv_columns_by_position_or_header(tmp_path):
    fields = ("inputs", "targets")
    plain = _write(tmp_path / "plain.tsv", "a b\tc d\n\ne\tf\n")
    assert text_files.read_file(plain, fields=fields) == [
        {"inputs": "a b", "targets": "c d"},
        {"inputs": "e", "targets": "f"},
    ]
    header = _write(tmp_path / "header.tsv", "id\ttargets\tinputs\n1\tx\ty\n")
    assert text_files.read_file(header, fields=fields) == [
        {"id": "1", "targets": "x", "inputs": "y"}
    ]
    # The vocabulary trains on every column when the record has no data.text_key.
    assert sources.vocab_texts({"inputs": "a", "targets": "b"}) == "a\nb"
    assert sources.vocab_texts(["a", "b"]) == "a\nb"
    assert sources.vocab_texts({"text": "t", "id": "1"}) == "t"


def test_a_text_file_trains_the_vocabulary_under_data_dir(tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    text = "".join(" ".join(words[(i + j) % 8] for j in range(6)) + "\n\n" for i in range(50))
    path = _write(tmp_path / "my corpus.txt", text)
    data_dir = tmp_path / "tfds"
    spm = vocab.load_or_train_vocab(None, data_dir=str(data_dir), dataset_name=path, vocab_size=24)
    # Cached under data_dir (not beside the user's file), keyed by the file's absolute path.
    assert spm.path.startswith(str(data_dir / "files")) and str(tmp_path)[1:] in spm.path
    assert spm.decode(spm.encode("alpha beta")) == "alpha beta"


def _batches(it, n):
    return [next(it) for _ in range(n)]


def test_sharded_batches_from_a_text_file_resume_exactly(tmp_path):
    class Chars:  # A vocabulary of code points: enough for batches, no training.
        eos_id = 1

        def encode(self, text):
            return [2 + (ord(c) % 50) for c in text]

    text = "".join(f"line {i} " + "ab" * (i % 5) + "\n" for i in range(40))
    source = sources.prepare_dataset(_write(tmp_path / "t.txt", text), sample_by="line")["train"]
    task = Task("causal_lm", seq_len=8)

    def make(process_index=0, process_count=1):
        return sharded_iterator.make_sharded_train_iterator(
            source,
            Chars(),
            batch_size=8,
            num_shards=4,
            seed=3,
            process_index=process_index,
            process_count=process_count,
            gather=lambda state: [state],
            task=task,
        )

    full = _batches(make(), 6)
    it = make()
    _batches(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    resumed = make()
    resumed.set_state(state)
    for a, b in zip(_batches(resumed, 4), full[2:], strict=True):
        for key in pipeline.KEYS:
            np.testing.assert_array_equal(a[key], b[key])
    # Two processes each make their half of the same global batches.
    halves = [_batches(make(p, 2), 1)[0]["targets"] for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), full[0]["targets"])


@pytest.mark.parametrize(
    "name, content, fields, message",
    [
        ("empty.txt", "\n \n", ("text",), r"empty.txt holds no records \(it is empty or blank\)"),
        ("latin1.txt", b"ok\ncaf\xe9\n", ("text",), r"latin1.txt:2: not UTF-8 text \(byte 0xe9"),
        (
            "bad.jsonl",
            '{"text": "a"}\n{"text": "b",}\n',
            ("text",),
            r"bad.jsonl:2: not valid JSON \(.* at column 14\)",
        ),
        ("list.jsonl", '["a"]\n', ("text",), r"list.jsonl:1: an array, not a JSON object"),
        (
            "pairs.tsv",
            "a\tb\nc\td\te\n",
            ("inputs", "targets"),
            r"pairs.tsv:2: 3 tab-separated columns where 2 \(inputs, targets\) are expected",
        ),
        (
            "sft.jsonl",
            '{"prompt": "p", "completion": "c"}\n{"prompt": "p", "answer": "c"}\n',
            ("prompt", "completion"),
            r"sft.jsonl:2: no field 'completion', which the task reads; the record has "
            r"\['answer', 'prompt'\]",
        ),
        (
            "num.jsonl",
            '{"text": 3}\n',
            ("text",),
            r"num.jsonl:1: field 'text' must be a string, got 3",
        ),
        ("pairs.txt", "a\n", ("prompt", "completion"), r"pairs.txt is plain text .* \.tsv file"),
    ],
)
def test_bad_files_are_one_line_naming_file_and_line(tmp_path, name, content, fields, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message) as info:
        sources.prepare_dataset(str(path), fields=fields)["train"]
    assert "\n" not in str(info.value)


def test_missing_files_and_splits(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such text file or directory; point it"):
        sources.prepare_dataset(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match=r"matches no file"):
        sources.prepare_dataset(str(tmp_path / "*.jsonl"))
    splits = sources.prepare_dataset(_write(tmp_path / "t.txt", "a\n\nb\n"))
    with pytest.raises(sources.SplitNotFoundError, match=r"data.eval_split='train\[95%:\]'"):
        splits["validation"]
    with pytest.raises(ConfigError, match=r"selects none of its 2 records"):
        splits["train[:0]"]
    with pytest.raises(ConfigError, match=r"Split 'train\[5:\]'.*incompatible with 2"):
        splits["train[5:]"]
    with pytest.raises(ConfigError, match=r"neither a split name nor a TFDS slice"):
        splits["train[a:b]"]


def test_tfds_splits_take_the_same_slices(corpus_dir):
    splits = sources.prepare_dataset("t5x_like_corpus", corpus_dir)
    n = splits.num_examples("validation")
    head, tail = splits["validation[:75%]"], splits["validation[75%:]"]
    assert "validation[75%:]" in splits and "nope[:5]" not in splits
    assert len(head) == splits.num_examples("validation[:75%]") == round(0.75 * n)
    assert len(head) + len(tail) == n
    assert tail[0] == splits["validation"][len(head)]
    with pytest.raises(sources.SplitNotFoundError, match="has no split 'nope'"):
        splits.num_examples("nope[:5]")


def test_each_task_names_the_fields_it_reads():
    assert Task("causal_lm", seq_len=8, text_key="body").record_fields == ("body",)
    assert Task("seq2seq", inputs_len=8, targets_len=8).record_fields == ("inputs", "targets")
    assert Task("sft", seq_len=8).record_fields == ("prompt", "completion")
    assert Task("classification", seq_len=8).record_fields is None  # finetune.py reads those
