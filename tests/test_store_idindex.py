"""The id index (each segment's id_hash column): written with every segment, used by the
duplicate-id check and remove, collision-safe, verified, computed when `gallery migrate`
converts a real schema-v1 store (which has none; test_store_migrate.py has the rest)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_helpers import ok, run
from gallery.errors import BadInput
from gallery.index import check_sidecar
from gallery.store import ModelInfo, Store, columns, idindex, schema
from gallery.store.columns import column_range
from gallery.store import manifest as store_manifest  # hand edits keep its checksum valid

DIM = 8
FIXTURE = Path(__file__).parent / "data" / "store_v1.h5.gz"  # made by tests/data/make_store_v1.py
V1_IDS = ["a0", "a1", "a2", "b0", "b1", "é-5", "日本-6"]      # a1 is removed


def naive_hash(ids) -> list[int]:
    """The documented definition, one id at a time."""
    return [int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids]


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _new_store(path: Path, ids: list[str]) -> Path:
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m")) as store:
        store.enroll(_rows(len(ids)), ids, batch_size=3)
    return path


def test_id_hash_written_with_every_batch(tmp_path):
    ids = [f"x{i}" for i in range(10)] + ["é", "日本", "a,b"]
    with Store.open(_new_store(tmp_path / "g.h5", ids)) as store:
        assert store.schema_version == schema.SCHEMA_VERSION == 4
        assert column_range(store, "id_hash", 0, store.committed).tolist() == naive_hash(ids)
        assert check_sidecar(store.verify(), store)["ok"]


def test_duplicates_rejected_and_remove_by_id(tmp_path):
    path = _new_store(tmp_path / "g.h5", [f"x{i}" for i in range(10)])
    with Store.open(path, "a") as store:
        with pytest.raises(BadInput, match="ids already in store .*: x3, x7$"):
            store.enroll(_rows(3, 1), ["new", "x3", "x7"])
        assert store.remove(["x9", "x2", "x9"])["ids"] == ["x2", "x9"]
        again = store.remove(["x2", "x4"])
        assert (again["removed"], again["already_removed"], again["ids"]) == (1, 1, ["x4"])
        with pytest.raises(BadInput, match="unknown ids: nope"):
            store.remove(["x1", "nope"])
        with pytest.raises(BadInput, match="already in store .*: x2"):
            store.enroll(_rows(1, 2), ["x2"])  # removed ids are never reused
        store.enroll(_rows(2, 3), ["new", "x10"])
        assert store.columns()["deleted"].nonzero()[0].tolist() == [2, 4, 9]
        assert check_sidecar(store.verify(), store)["ok"]


def test_hash_collisions_never_reject_a_new_id(tmp_path, monkeypatch):
    # Constant-ish: every id of even length hashes to 0, odd length to 1.
    monkeypatch.setattr(schema, "id_hash", lambda ids: np.array([len(i) % 2 for i in ids], np.uint64))
    path = _new_store(tmp_path / "g.h5", ["aa", "bb", "ccc", "dd"])
    with Store.open(path, "a") as store:
        assert column_range(store, "id_hash", 0, store.committed).tolist() == [0, 0, 1, 0]
        store.enroll(_rows(2, 1), ["ee", "fff"])  # both collide with stored hashes: still new
        with pytest.raises(BadInput, match="already in store .*: bb$"):
            store.enroll(_rows(2, 2), ["gg", "bb"])
        assert store.remove(["dd"])["ids"] == ["dd"]
        with pytest.raises(BadInput, match="unknown ids: zz"):
            store.remove(["zz"])  # collides with every even-length id, matches none
        assert store.columns()["id"].tolist() == ["aa", "bb", "ccc", "dd", "ee", "fff"]
        assert check_sidecar(store.verify(), store)["ok"]


def test_matcher_and_read_rows_against_numpy(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 2**64 - 1, size=50_000, dtype=np.uint64)
    skewed = stored % np.uint64(7)  # far from uniform: only slower, never wrong
    for values in (stored, skewed):
        wanted = np.unique(np.concatenate([values[rng.choice(values.size, 40)],
                                           rng.integers(0, 2**64 - 1, size=40, dtype=np.uint64)]))
        np.testing.assert_array_equal(idindex.matcher(wanted)(values), np.flatnonzero(np.isin(values, wanted)))
    # Rows read across segments (enrolled in 3 calls), in runs: the same as reading everything.
    monkeypatch.setattr(columns, "RUN_BLOCK", 16)
    monkeypatch.setattr(columns, "RUN_GAP", 3)
    path = _new_store(tmp_path / "r.h5", [f"r{i}" for i in range(40)])
    with Store.open(path, "a") as store:
        store.enroll(_rows(35, 1), [f"r{i}" for i in range(40, 75)])
        store.enroll(_rows(25, 2), [f"r{i}" for i in range(75, 100)])
        assert len(store.manifest["segments"]) == 3
        everything = column_range(store, "id", 0, 100)
        rows = np.array([0, 1, 2, 9, 15, 16, 17, 39, 40, 60, 74, 75, 99])
        np.testing.assert_array_equal(columns.column_rows(store, "id", rows), everything[rows])
        assert columns.column_rows(store, "id", np.array([], np.int64)).size == 0


# ---- a real schema-v1 store (no id_hash) through `gallery migrate` -----------------------

@pytest.fixture()
def v1_store(tmp_path):
    path = tmp_path / "old.h5"
    with gzip.open(FIXTURE) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def test_v1_store_migrated_with_a_tail_and_a_half_written_id_hash(v1_store, monkeypatch):
    """A v1 file with an interrupted enrol's tail and a half-written id_hash (from a v1->v2
    migration killed by an older release): migrate copies committed rows only and computes
    every hash from the ids."""
    with h5py.File(v1_store, "r+") as h5:
        items = h5["items"]
        for name in ("id", "identity", "model", "content_hash", "enrolled_at", "deleted", "deleted_at",
                     "embedding"):
            items[name].resize(9, axis=0)
        items["id"][7:9] = [b"tail-0", b"tail-1"]
        items.create_dataset("id_hash", data=np.arange(4, dtype=np.uint64), maxshape=(None,))
    monkeypatch.setattr(idindex, "HASH_BLOCK", 3)  # several blocks even for 7 rows
    assert ok("migrate", v1_store, "--json")["rows"] == 7
    with Store.open(v1_store, "a") as store:
        assert column_range(store, "id_hash", 0, store.committed).tolist() == naive_hash(V1_IDS)
        store.enroll(_rows(1, 6), ["tail-0"])  # the tail's ids were never committed
        assert store.columns()["id"].tolist() == [*V1_IDS, "tail-0"]
        report = check_sidecar(store.verify(), store)
    assert report["ok"] and not report["warnings"], report


def test_verify_reports_a_corrupted_id_hash(tmp_path):
    path = _new_store(tmp_path / "g.h5", V1_IDS)
    manifest = store_manifest.load(path)
    record = manifest["segments"][0]
    with h5py.File(path / record["file"], "r+", locking=False) as h5:
        h5["id_hash"][4] ^= np.uint64(1)
    assert "fails its checksum" in run("verify", path, "--json").stdout  # the file's sha256 first
    # The same flip with the file's checksum updated (as a bug, not bit rot, would leave it):
    data = (path / record["file"]).read_bytes()
    record["bytes"], record["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    store_manifest.commit(path, manifest, durable=False)
    damaged = run("verify", path, "--json")
    assert damaged.exit_code == 1
    assert "id_hash does not match the id in 1 row(s), first row 4" in damaged.stdout
