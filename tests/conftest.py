"""Test setup: 8 fake CPU devices and the host malloc settings, before JAX starts its backends."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from t5x_like import host_memory  # noqa: E402

# As the experiment scripts do, before JAX starts: XLA:CPU's per-execution buffers are reused.
host_memory.configure()

TEST_VOCAB_SIZE = 256


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    """A TFDS data dir with the embedded corpus and a small cached vocabulary, built once."""
    from t5x_like.data import sources, vocab

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    sources.prepare_dataset("t5x_like_corpus", data_dir)
    vocab.load_or_train_vocab(
        None, data_dir=data_dir, dataset_name="t5x_like_corpus", vocab_size=TEST_VOCAB_SIZE
    )
    return data_dir
