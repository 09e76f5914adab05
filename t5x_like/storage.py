"""Workdir files on a local disk or an object store (gs://, s3://), through `etils.epath`.

Every workdir file operation goes through here, so a `--workdir` may be a local path or a
`gs://bucket/run` / `s3://bucket/run` URL (gcsfs / s3fs under etils.epath; credentials come from
the environment as the cloud SDKs define them, never from the config). What differs on object
stores, and how this module hides it:

- whole-file writes are atomic there (one PUT); on a local disk they go through a temporary file
  and `os.replace`, so a reader never sees half a file either way;
- there is no append (gcsfs's 'a' truncates, s3fs uploads only at close): metrics are written as
  whole per-interval chunks `metrics/<first step>.jsonl` (`write_metrics_chunk`), read back in
  order together with a local `metrics.jsonl` by `read_metrics_lines`;
- there is no `flock`: `LeaseLock` holds a lease object that its holder renews; another run
  refuses while the lease is fresh and takes over an expired one;
- an unreachable or unauthorised bucket is found by `check_reachable` (write, read back and
  delete a small object) before anything is built, as one line naming the bucket;
- Orbax 0.12.8 knows gs:// (TensorStore's gcs driver) but not s3://: `install_orbax_s3_adapter`
  maps s3:// URLs to TensorStore's s3 kvstore driver (with the endpoint from AWS_ENDPOINT_URL),
  and `atomicity_options()` picks the commit-file protocol there (no temp-dir rename).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib import parse

from etils import epath

from t5x_like.errors import ConfigError

SCHEMES = ("gs", "s3")
METRICS_FILE = "metrics.jsonl"
METRICS_DIR = "metrics"


class StorageError(ConfigError):
    """A workdir on an object store cannot be used: unreachable, unauthorised, or in use."""


def scheme(path: str | os.PathLike) -> str | None:
    """'gs' or 's3' for an object-store URL, None for a local path."""
    head, sep, _ = str(path).partition("://")
    return head if sep and head in SCHEMES else None


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is an object-store URL (gs://, s3://)."""
    return scheme(path) is not None


def resolve(path: str | os.PathLike) -> str:
    """A canonical form: local paths absolute with ~ expanded; URLs without a trailing '/'.

    Raises:
      StorageError: a URL with another scheme (e.g. az://) or no bucket.
    """
    text = str(path)
    if "://" in text and not is_remote(text):
        raise StorageError(
            f"{text}: only local paths, gs://bucket/... and s3://bucket/... are supported."
        )
    if not is_remote(text):
        return os.path.abspath(os.path.expanduser(text))
    parsed = parse.urlparse(text)
    if not parsed.netloc:
        raise StorageError(f"{text}: name a bucket, as in {parsed.scheme}://bucket/run.")
    rest = "/".join(p for p in parsed.path.split("/") if p)
    return f"{parsed.scheme}://{parsed.netloc}" + (f"/{rest}" if rest else "")


def join(base: str, *parts: str) -> str:
    """`base`/`parts` with '/' on object stores (os.path.join for local paths)."""
    if not is_remote(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def dirname(path: str) -> str:
    """The parent of `path` (the bucket root stays itself)."""
    if not is_remote(path):
        return os.path.dirname(path)
    head = str(path).rstrip("/")
    parent = head.rsplit("/", 1)[0]
    return head if parent.endswith(":/") else parent


def epath_of(path: str) -> epath.Path:
    """The `etils.epath.Path` of `path`, fresh (see `_fresh`)."""
    return _fresh(path)


def _fresh(path: str) -> epath.Path:
    """`epath.Path(path)`, with the object store's cached listings of it dropped first: gcsfs
    and s3fs cache directory listings per process, so without this a run would not see the
    objects that another process (or Orbax's TensorStore) wrote since."""
    if is_remote(path):
        fs = _filesystem(path)
        fs.invalidate_cache(fs._strip_protocol(str(path)))
    return epath.Path(path)


def _filesystem(path: str) -> Any:
    """The fsspec filesystem (gcsfs / s3fs instance) etils.epath uses for `path`: the same
    instance, so that its listing cache is the one `_fresh` drops."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(str(path))


def exists(path: str) -> bool:
    return _fresh(path).exists()


def isdir(path: str) -> bool:
    """A directory, or on an object store a prefix with objects under it."""
    return _fresh(path).is_dir()


def isfile(path: str) -> bool:
    return _fresh(path).is_file()


def makedirs(path: str) -> None:
    """Creates a local directory (and parents); object stores have no directories to make."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names directly under `path`; empty when it does not exist."""
    p = _fresh(path)
    if not p.is_dir():
        return []
    return sorted(child.name for child in p.iterdir())


def read_bytes(path: str) -> bytes:
    return _fresh(path).read_bytes()


def read_text(path: str) -> str:
    return _fresh(path).read_text(encoding="utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Writes the whole file at once: readers see the old file or the new one, never part.

    Local: a temporary file in the same directory, then `os.replace`. Object stores: a single
    upload, which the store makes visible atomically.
    """
    if is_remote(path):
        _fresh(path).write_bytes(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, record: Any) -> None:
    """A JSON report, indented with sorted keys, written whole (`write_bytes`)."""
    write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def remove(path: str, missing_ok: bool = True) -> None:
    """Deletes one file (object)."""
    try:
        _fresh(path).unlink()
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path: str) -> None:
    """Deletes a directory (all objects under a prefix); nothing when it does not exist."""
    p = _fresh(path)
    if p.exists():
        p.rmtree()


def move(source: str, target: str) -> None:
    """Renames a file or directory; on object stores, copies every object then deletes."""
    if not is_remote(source):
        shutil.move(source, target)
        return
    # Object by object: s3fs's recursive mv also copies the prefix itself, which is no object.
    fs = _filesystem(source)
    src, dst = fs._strip_protocol(source), fs._strip_protocol(target)
    fs.invalidate_cache(src)
    keys = fs.find(src)
    for key in keys:
        fs.copy(key, dst + key[len(src) :])
    fs.rm(keys)
    fs.invalidate_cache(src)
    fs.invalidate_cache(dst)


def glob_names(path: str, pattern: str) -> list[str]:
    """Names under `path` matching a glob `pattern` (one level)."""
    p = _fresh(path)
    if not p.is_dir():
        return []
    return sorted(child.name for child in p.glob(pattern))


def open_for_write(path: str, mode: str = "wb") -> Any:
    """A file object for a writer that needs one (e.g. a PNG); on object stores the object
    appears whole when it is closed."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, mode)  # noqa: SIM115 - the caller closes it.
    return _fresh(path).open(mode)


# --- Reachability -------------------------------------------------------------------------


def _describe_failure(url: str, error: BaseException) -> str:
    kind = scheme(url)
    text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    if kind == "s3":
        where = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        creds = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)" + (
            f", endpoint AWS_ENDPOINT_URL={where}" if where else ""
        )
    else:
        where = os.environ.get("STORAGE_EMULATOR_HOST")
        creds = (
            "application default credentials (gcloud auth application-default login, the "
            "VM's service account, or GOOGLE_APPLICATION_CREDENTIALS)"
        )
        if where:
            creds += f", emulator STORAGE_EMULATOR_HOST={where}"
    return (
        f"--workdir={url} is not reachable or not writable ({text}). Check that the bucket "
        f"exists and that this machine's credentials may write to it: {creds}."
    )


# Seconds the reachability probe may take: the SDKs retry a dead endpoint with backoff for
# about 40s (gcsfs) before they give up.
PROBE_TIMEOUT_S = float(os.environ.get("T5X_LIKE_STORAGE_PROBE_TIMEOUT_S", "60"))


def check_reachable(workdir: str, timeout_s: float | None = None) -> None:
    """Writes, reads back and deletes a small object under `workdir` (object stores only):
    a bucket that does not exist, is out of reach or refuses this machine's credentials fails
    here, before anything is built.

    Raises:
      StorageError: one line naming the workdir, the store's error and the credentials used.
    """
    if not is_remote(workdir):
        return
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    probe = join(workdir, f".probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    result: dict[str, BaseException | None] = {"error": None}

    def attempt() -> None:
        try:
            write_bytes(probe, b"t5x_like reachability probe\n")
            if read_bytes(probe) != b"t5x_like reachability probe\n":
                raise OSError("the probe object read back differs from what was written")
            remove(probe)
        except BaseException as e:  # noqa: BLE001 - any failure means the store is unusable.
            result["error"] = e

    # The SDKs retry a dead endpoint for minutes; a thread bounds the wait.
    thread = threading.Thread(target=attempt, daemon=True, name="storage-probe")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise StorageError(_describe_failure(workdir, TimeoutError(f"no answer in {timeout_s}s")))
    if result["error"] is not None:
        raise StorageError(_describe_failure(workdir, result["error"])) from result["error"]


# --- Lease lock -----------------------------------------------------------------------------


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


class LeaseLock:
    """A lease object `<workdir>/.lock` on an object store: one run at a time.

    The holder writes {host, pid, started, renewed, expires, token} and renews it every
    `ttl_s / 3` from a background thread. Another run refuses while the lease is unexpired
    (naming the holder) and takes over an expired one (a run that died without releasing).
    A takeover writes the new lease, waits, and reads it back: of two runs racing for an
    expired lease, the one whose write landed last wins and the other refuses.
    """

    def __init__(self, path: str, ttl_s: float = 60.0, settle_s: float = 1.0):
        self.path = path
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = _now()

    def _record(self) -> dict[str, Any]:
        now = _now()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _iso(self._started),
            "renewed": _iso(now),
            "expires_unix": now + self.ttl_s,
            "token": self.token,
            "command": " ".join(sys.argv),
        }

    def read(self) -> dict[str, Any] | None:
        """The lease as stored; None when there is none (or it is unreadable)."""
        try:
            return json.loads(read_text(self.path))
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def describe(info: dict[str, Any]) -> str:
        return (
            f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('started')}, "
            f"lease renewed {info.get('renewed')}: {info.get('command')}"
        )

    def acquire(self) -> str | None:
        """Takes the lease; returns the holder's description instead when a live run has it."""
        held = self.read()
        if held and held.get("token") != self.token and held.get("expires_unix", 0) > _now():
            return self.describe(held)
        write_text(self.path, json.dumps(self._record()))
        time.sleep(self.settle_s)
        held = self.read()
        if not held or held.get("token") != self.token:
            return self.describe(held or {})
        self._thread = threading.Thread(target=self._renew, daemon=True, name="lease-renewal")
        self._thread.start()
        return None

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                write_text(self.path, json.dumps(self._record()))
            except Exception:  # noqa: BLE001 - a missed renewal is retried at the next tick.
                pass

    def release(self) -> None:
        """Stops renewing and deletes the lease (only if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            held = self.read()
            if held and held.get("token") == self.token:
                remove(self.path)


# --- Metrics ----------------------------------------------------------------------------------


def metrics_chunk_path(workdir: str, first_step: int) -> str:
    """`<workdir>/metrics/<first step, 9 digits>-<write time, ns>-<random>.jsonl`: names sort
    in step order, then write order (a resumed run re-logging a step comes after), and never
    collide."""
    name = f"{first_step:09d}-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}.jsonl"
    return join(workdir, METRICS_DIR, name)


def write_metrics_chunk(workdir: str, first_step: int, lines: Iterable[str]) -> str:
    """Writes `lines` (JSON records) as one whole object; returns its path."""
    path = metrics_chunk_path(workdir, first_step)
    write_text(path, "".join(line if line.endswith("\n") else line + "\n" for line in lines))
    return path


def read_metrics_lines(workdir: str) -> list[str]:
    """The metric records of a workdir, in the order they were written: a local
    `metrics.jsonl` first, then the chunks of `metrics/` by name (the first step they hold,
    then their write time). Reading both lets one reader serve local and object-store runs.

    Raises:
      FileNotFoundError: neither exists.
    """
    workdir = resolve(workdir)
    single = join(workdir, METRICS_FILE)
    chunk_dir = join(workdir, METRICS_DIR)
    lines: list[str] = []
    found = False
    if not is_remote(workdir) and os.path.isfile(single):
        found = True
        with open(single, encoding="utf-8") as f:
            lines.extend(f.read().splitlines())
    chunks = sorted(n for n in listdir(chunk_dir) if n.endswith(".jsonl"))
    if chunks:
        found = True
        for name in chunks:  # Names sort in (step, write time) order.
            lines.extend(read_text(join(chunk_dir, name)).splitlines())
    if not found:
        raise FileNotFoundError(f"No metrics in {workdir} ({METRICS_FILE} or {METRICS_DIR}/).")
    return [line for line in lines if line.strip()]


# --- Orbax on s3:// ---------------------------------------------------------------------------


def s3_endpoint() -> str | None:
    """The S3 endpoint the environment names (S3-compatible stores, emulators); None: AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_kvstore_spec(url: str) -> dict[str, Any]:
    """TensorStore's s3 kvstore spec for an s3:// URL; the driver ignores AWS_ENDPOINT_URL, so
    the endpoint (and region) from the environment go into the spec."""
    parsed = parse.urlparse(url)
    spec: dict[str, Any] = {
        "driver": "s3",
        "bucket": parsed.netloc,
        "path": parsed.path.lstrip("/"),
    }
    endpoint = s3_endpoint()
    if endpoint:
        spec["endpoint"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        spec["aws_region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        # Keys in the environment: use them directly (the default chain also tries profile
        # files and logs an error line for each one missing, at every open).
        spec["aws_credentials"] = {"type": "environment"}
    return spec


_ADAPTER_LOCK = threading.Lock()
_ADAPTER_INSTALLED = False


def install_orbax_s3_adapter() -> None:
    """Makes Orbax 0.12.8 write and read s3:// checkpoints through TensorStore's s3 driver.

    Orbax builds every array's kvstore spec in `tensorstore_utils` from the path: it keeps
    'gs://' (normalising the path would make it 'gs:/') and hands it to the gcs driver; any
    other path is taken as a local file. This adapter, confined to that module's three hooks,
    treats s3:// the way Orbax treats gs://, with `s3_kvstore_spec`. gs:// and local paths are
    unchanged. Idempotent. Remove once Orbax supports s3:// itself.
    """
    global _ADAPTER_INSTALLED
    with _ADAPTER_LOCK:
        if _ADAPTER_INSTALLED:
            return
        import types

        from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

        original_normalize = ts_utils._normalize_path
        original_use_gcs = ts_utils._use_gcs_driver
        gcs_utils = ts_utils.gcs_utils

        def normalize(path: str) -> str:
            path = str(path)
            if path.startswith("s3://"):
                return "s3://" + os.path.normpath(path[len("s3://") :])
            return original_normalize(path)

        def use_remote_driver(directory: str) -> bool:
            return str(directory).startswith("s3://") or original_use_gcs(directory)

        def kvstore_for(path: str) -> dict[str, Any]:
            if str(path).startswith("s3://"):
                return s3_kvstore_spec(str(path))
            return gcs_utils.get_kvstore_for_gcs(path)

        proxy = types.ModuleType("gcs_utils_with_s3")
        proxy.__dict__.update(gcs_utils.__dict__)
        proxy.get_kvstore_for_gcs = kvstore_for
        ts_utils._normalize_path = normalize
        ts_utils._use_gcs_driver = use_remote_driver
        ts_utils.gcs_utils = proxy
        _ADAPTER_INSTALLED = True


def atomicity_options(directory: str) -> Any:
    """Orbax's atomicity options for checkpoints under `directory`: the commit-file protocol
    on s3:// (the default temp-dir rename cannot work there), Orbax's default elsewhere."""
    if scheme(directory) != "s3":
        return None
    from orbax.checkpoint import options as ocp_options

    return ocp_options.AtomicityOptions(mode=ocp_options.AtomicityMode.COMMIT_FILE)
