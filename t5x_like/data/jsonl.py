"""JSONL records, kept for the importers of `jsonl.read_records`: the reader is `text_files.py`,
which reads .jsonl files (and .txt, .tsv) as datasets."""

from t5x_like.data.text_files import parse_jsonl_line as parse_line
from t5x_like.data.text_files import read_jsonl as read_records

__all__ = ["parse_line", "read_records"]
