"""t5x_like/storage.py on both emulated object stores and a local directory: whole-file
writes, listings that see other writers, moves, metrics chunks read back in order, the lease
lock, and Orbax checkpoints through the s3 adapter."""

from __future__ import annotations

import json
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_like import storage, workdir
from t5x_like.training.metrics_writer import MetricsWriter, read_metrics


def test_resolve_and_join():
    assert storage.resolve("gs://b/run/") == "gs://b/run"
    assert storage.resolve("s3://b//a/") == "s3://b/a"
    assert storage.join("s3://b/run", "checkpoints", "3") == "s3://b/run/checkpoints/3"
    assert storage.dirname("gs://b/run/checkpoints") == "gs://b/run"
    assert storage.basename("gs://b/run/checkpoints") == "checkpoints"
    assert not storage.is_remote("/tmp/x") and storage.resolve("/tmp/x/") == "/tmp/x"
    with pytest.raises(storage.StorageError, match=r"az://b/x: only local paths, gs://"):
        storage.resolve("az://b/x")
    with pytest.raises(storage.StorageError, match=r"name a bucket, as in gs://bucket/run"):
        storage.resolve("gs:///run")


def test_files_listing_move(store):
    root = store.url("layer", "files")
    storage.write_text(storage.join(root, "a", "x.json"), '{"v": 1}')
    storage.write_bytes(storage.join(root, "a", "sub", "y.bin"), b"\x00\x01")
    assert storage.listdir(root) == ["a"]
    assert storage.listdir(storage.join(root, "a")) == ["sub", "x.json"]
    assert storage.isdir(storage.join(root, "a")) and storage.isfile(storage.join(root, "a/x.json"))
    assert json.loads(storage.read_text(storage.join(root, "a", "x.json"))) == {"v": 1}
    # Another writer (here: a second write of another size) is seen at once, not a cached size.
    storage.write_text(storage.join(root, "a", "x.json"), '{"v": 22222}')
    assert json.loads(storage.read_text(storage.join(root, "a", "x.json"))) == {"v": 22222}
    storage.move(storage.join(root, "a"), storage.join(root, "a.corrupt-1"))
    assert storage.listdir(root) == ["a.corrupt-1"]
    assert storage.read_bytes(storage.join(root, "a.corrupt-1", "sub", "y.bin")) == b"\x00\x01"
    storage.rmtree(root)
    assert storage.listdir(root) == []


def test_metrics_read_back_in_order_locally(tmp_path):
    _check_metrics(str(tmp_path / "run"), remote=False)


def test_metrics_read_back_in_order(store):
    _check_metrics(store.url("layer", "metrics"), remote=True)


def _check_metrics(run: str, remote: bool) -> None:
    """One reader for both layouts: metrics.jsonl locally, whole chunks on object stores."""
    writer = MetricsWriter(run, enabled=True)
    for step in (2, 4):
        writer.write(step, "train", {"loss": float(step)})
    writer.write(4, "eval", {"loss": 0.5})
    writer.write(4, "train", {"loss": 40.0})  # A resumed run re-logging step 4: later wins.
    writer.close()
    assert {s: r["loss"] for s, r in read_metrics(run, "train").items()} == {2: 2.0, 4: 40.0}
    assert read_metrics(run, "eval")[4]["loss"] == 0.5
    if not remote:
        assert storage.isfile(storage.join(run, storage.METRICS_FILE))
        assert not storage.exists(storage.join(run, storage.METRICS_DIR))
    else:
        chunks = storage.listdir(storage.join(run, storage.METRICS_DIR))
        assert len(chunks) == 4 and chunks == sorted(chunks)
        assert storage.listdir(storage.join(run, "tensorboard"))


def test_lease_lock(store, monkeypatch):
    run = store.url("layer", "lease")
    with workdir.WorkdirLock(run) as held:
        lease = json.loads(storage.read_text(held.path))
        assert lease["pid"] > 0 and lease["expires_unix"] > time.time()
        holder = r"in use by another training run \(host [^,]+, pid \d+, started 20"
        with pytest.raises(workdir.WorkdirLockedError, match=holder):
            workdir.WorkdirLock(run).__enter__()
    assert not storage.exists(storage.join(run, ".lock"))  # Released.
    # A run that died holding it: its expired lease is taken over.
    stale = {"host": "gone", "pid": 1, "expires_unix": time.time() - 1, "token": "old"}
    storage.write_text(storage.join(run, ".lock"), json.dumps(stale))
    with workdir.WorkdirLock(run) as held:
        assert json.loads(storage.read_text(held.path))["token"] != "old"


def test_check_reachable(store):
    storage.check_reachable(store.url("layer", "probe"))  # Leaves nothing behind.
    assert storage.listdir(store.url("layer", "probe")) == []
    with pytest.raises(storage.StorageError, match=r"--workdir=.*://no-such-bucket-x/r is not"):
        storage.check_reachable(f"{store.scheme}://no-such-bucket-x/r", timeout_s=20)


def test_orbax_checkpoint_roundtrip(store):
    """Orbax writes into the bucket itself (no local `s3:/` directory), reads back the same."""
    directory = store.url("layer", "orbax")
    storage.install_orbax_s3_adapter()
    options = ocp.CheckpointManagerOptions(atomicity_options=storage.atomicity_options(directory))
    tree = {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(3, np.int32)}
    with ocp.CheckpointManager(directory, options=options, item_names=("state",)) as manager:
        manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
        manager.wait_until_finished()
    assert storage.listdir(directory) == ["5"]
    with ocp.CheckpointManager(directory, options=options, item_names=("state",)) as manager:
        assert manager.all_steps() == [5]
        restored = manager.restore(
            5, args=ocp.args.Composite(state=ocp.args.StandardRestore(tree))
        )["state"]
    np.testing.assert_array_equal(restored["w"], tree["w"])
    np.testing.assert_array_equal(restored["b"], tree["b"])
