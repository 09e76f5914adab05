"""The embedded corpus: a TFDS dataset of the English text every CPython install ships with.

Documents are the pydoc topics (`pydoc_data.topics`, one per topic) and the docstrings of the
standard library's public modules, classes and functions (see `stdlib_docs.py`). Nothing is
downloaded. The train/validation split is decided by a SHA-256 of each document's text, so it
does not depend on import order, PYTHONHASHSEED or the machine; only on the Python version.

    builder = EmbeddedCorpus(data_dir=..., file_format="array_record")
    prepare_quietly(builder)  # or builder.download_and_prepare()

The embedded builders (`LocalBuilder`) say what they do in one log line, not with TFDS's
"Downloading and preparing dataset" banner and progress bars: they download nothing.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from t5x_like.data import stdlib_docs

NAME = "t5x_like_corpus"
# Percent of documents (by text hash) held out for validation.
VALIDATION_PERCENT = 5
# Importing ~350 modules takes about a second; the limit only guards against a hung import.
_COLLECT_TIMEOUT_S = 300


def is_validation(text: str) -> bool:
    """Whether `text` belongs to the validation split: a stable hash, independent of the run."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < VALIDATION_PERCENT


def collect_records() -> list[dict[str, str]]:
    """Runs stdlib_docs.py in an isolated child interpreter and returns its records.

    Records are {"text", "kind", "module"} (see `stdlib_docs.collect_records`).

    A child process keeps the side effects of importing every stdlib module (threads, signal
    handlers, output) out of this process. `-I -S` keeps user site-packages, PYTHON* variables
    and third-party packages from shadowing standard-library modules.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    with tempfile.TemporaryDirectory(prefix="t5x_like_corpus_") as tmp:
        out = os.path.join(tmp, "docs.json")
        proc = subprocess.run(
            [sys.executable, "-I", "-S", stdlib_docs.__file__, out],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_COLLECT_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")[-2000:]
            raise RuntimeError(
                f"Collecting the embedded corpus failed (exit {proc.returncode}):\n{stderr}"
            )
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def collect_documents() -> list[str]:
    """The corpus documents: the texts of `collect_records()`, in collection order."""
    return [r["text"] for r in collect_records()]


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder whose data is on this machine: TFDS's download banners (printed to stdout,
    "Downloading and preparing dataset ...") become one INFO line each."""

    def _log_download_bytes(self) -> None:
        logging.info(
            "Building %s under %s from text shipped with Python (nothing is downloaded).",
            self.name,
            self.data_dir,
        )

    def _log_download_done(self) -> None:
        logging.info("Built %s in %s.", self.name, self.data_dir)


def prepare_quietly(builder: tfds.core.DatasetBuilder) -> None:
    """`builder.download_and_prepare()` without TFDS's progress bars (a second of local work
    drawn as several bars), restoring the bars' setting afterwards."""
    shown = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        builder.download_and_prepare()
    finally:
        tfds.display_progress_bar(shown)


class EmbeddedCorpus(LocalBuilder):
    """English prose bundled with CPython, split into train and validation by text hash."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "pydoc topics and standard-library docstrings."}

    def __init__(self, *, documents: list[str] | None = None, **kwargs):
        """`documents`: already collected documents to build from (None: collect them)."""
        self._documents = documents
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default probes `importlib_resources.abc`, a backport it only declares as a
        # dependency for Python < 3.9, so it fails when the backport is not installed. The
        # answer it would compute is simply this file.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "pydoc_data.topics and public standard-library docstrings of Python "
                f"{sys.version_info.major}.{sys.version_info.minor}; one document each."
            ),
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download.
        docs = self._documents if self._documents is not None else collect_documents()
        return {
            "train": self._generate_examples([d for d in docs if not is_validation(d)]),
            "validation": self._generate_examples([d for d in docs if is_validation(d)]),
        }

    def _generate_examples(self, docs: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
        # Documents are distinct, so their hashes are unique keys; TFDS orders records by a
        # hash of the key, which makes the stored order independent of collection order.
        for text in docs:
            yield hashlib.sha256(text.encode("utf-8")).hexdigest(), {"text": text}


def build(data_dir: str, documents: list[str] | None = None) -> None:
    """Prepares the corpus as array_record under `data_dir` (a no-op when already there).

    `documents` are `collect_documents()`'s, when already collected (see
    `docstrings.build_all`).
    """
    builder = EmbeddedCorpus(data_dir=data_dir, file_format="array_record", documents=documents)
    prepare_quietly(builder)
