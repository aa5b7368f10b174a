"""The id index (/items/id_hash, schema v2): written with every batch, used by the duplicate-id
check and remove, collision-safe, verified, and migrated into a real schema-v1 store."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_helpers import ok, run
from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store, idindex, schema
from test_fault_injection import CHILD as FAULT_CHILD

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
        assert store.schema_version == schema.SCHEMA_VERSION == 2
        assert store.h5["items/id_hash"][:].tolist() == naive_hash(ids)
        assert store.verify()["ok"]


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
        assert store.verify()["ok"]


def test_hash_collisions_never_reject_a_new_id(tmp_path, monkeypatch):
    # Constant-ish: every id of even length hashes to 0, odd length to 1.
    monkeypatch.setattr(schema, "id_hash", lambda ids: np.array([len(i) % 2 for i in ids], np.uint64))
    path = _new_store(tmp_path / "g.h5", ["aa", "bb", "ccc", "dd"])
    with Store.open(path, "a") as store:
        assert store.h5["items/id_hash"][:].tolist() == [0, 0, 1, 0]
        store.enroll(_rows(2, 1), ["ee", "fff"])  # both collide with stored hashes: still new
        with pytest.raises(BadInput, match="already in store .*: bb$"):
            store.enroll(_rows(2, 2), ["gg", "bb"])
        assert store.remove(["dd"])["ids"] == ["dd"]
        with pytest.raises(BadInput, match="unknown ids: zz"):
            store.remove(["zz"])  # collides with every even-length id, matches none
        assert store.columns()["id"].tolist() == ["aa", "bb", "ccc", "dd", "ee", "fff"]
        assert store.verify()["ok"]


def test_matcher_and_read_rows_against_numpy(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 2**64 - 1, size=50_000, dtype=np.uint64)
    skewed = stored % np.uint64(7)  # far from uniform: only slower, never wrong
    for values in (stored, skewed):
        wanted = np.unique(np.concatenate([values[rng.choice(values.size, 40)],
                                           rng.integers(0, 2**64 - 1, size=40, dtype=np.uint64)]))
        np.testing.assert_array_equal(idindex.matcher(wanted)(values), np.flatnonzero(np.isin(values, wanted)))
    monkeypatch.setattr(idindex, "RUN_BLOCK", 16)
    monkeypatch.setattr(idindex, "RUN_GAP", 3)
    with h5py.File(tmp_path / "r.h5", "w") as h5:
        ds = h5.create_dataset("x", data=np.arange(100) * 10)
        rows = np.array([0, 1, 2, 9, 15, 16, 17, 60, 99])
        np.testing.assert_array_equal(idindex.read_rows(ds, rows), rows * 10)
        assert idindex.read_rows(ds, np.array([], np.int64)).size == 0


# ---- the real schema-v1 store ------------------------------------------------------------

@pytest.fixture()
def v1_store(tmp_path):
    path = tmp_path / "old.h5"
    with gzip.open(FIXTURE) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def _raw(path: Path) -> dict:
    """Everything a v1 reader could see, read with plain h5py (the store refuses to open it)."""
    with h5py.File(path, "r") as h5:
        items = h5["items"]
        n = int(items.attrs["committed"])
        out = {name: items[name][:n] for name in items if name != "id_hash"}
        out["chain"] = bytes(items.attrs["chain"])
        out["batches"] = h5["batches/bytes"][:].tobytes()
        return out


def _reference_top2(raw: dict, queries: np.ndarray) -> list[list[str]]:
    emb = raw["embedding"].astype(np.float32)
    scores = l2_normalize(queries) @ emb.T
    scores[:, raw["deleted"].astype(bool)] = -np.inf
    ids = np.char.decode(raw["id"], "utf-8")
    return [ids[np.argsort(-row, kind="stable")[:2]].tolist() for row in scores]


def test_v1_store_refused_then_migrated_by_the_cli(v1_store, monkeypatch):
    with h5py.File(v1_store, "r") as h5:
        assert int(h5.attrs["schema_version"]) == 1 and "id_hash" not in h5["items"]
    before, fixture_sha = _raw(v1_store), file_sha256(v1_store)
    with pytest.raises(BadInput, match=f"schema v1 .*run `gallery migrate {v1_store}`"):
        Store.open(v1_store)
    refused = run("info", v1_store)
    assert refused.exit_code == 2 and "gallery migrate" in refused.stderr
    assert file_sha256(v1_store) == fixture_sha  # the refused reads changed nothing
    monkeypatch.setattr(idindex, "HASH_BLOCK", 3)  # several blocks even for 7 rows
    assert ok("migrate", v1_store, "--json")["schema_version"] == 2
    after = _raw(v1_store)
    assert after.keys() == before.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    queries = _rows(5, 9)
    with Store.open(v1_store) as store:
        assert store.columns()["id"].tolist() == V1_IDS and store.count() == 6
        assert store.h5["items/id_hash"][:].tolist() == naive_hash(V1_IDS)
        last = store.history()[-1]
        assert (last["event"], last["from"], last["to"]) == ("migrate", 1, 2)
        hits = store.search(queries, k=2)
        assert hits.ids.tolist() == _reference_top2(before, queries)
        assert store.verify()["ok"]


def test_migrated_store_still_rejects_duplicates(v1_store):
    with Store.open(v1_store, "a") as store:  # writers migrate on open
        assert store.schema_version == 2
        for taken in ("b0", "a1", "日本-6"):  # live, removed, non-ASCII
            with pytest.raises(BadInput, match=f"already in store .*: {taken}$"):
                store.enroll(_rows(2, 4), ["fresh", taken])
        store.enroll(_rows(1, 5), ["fresh"])
        assert store.remove(["é-5"])["ids"] == ["é-5"]
        assert store.verify()["ok"]


def test_migration_after_a_crash(v1_store):
    """A v1 store with an interrupted enrol's tail and a half-written id_hash from a killed
    migration: the migration redoes the column, the next enrol drops the tail."""
    with h5py.File(v1_store, "r+") as h5:
        items = h5["items"]
        for name in ("id", "identity", "model", "content_hash", "enrolled_at", "deleted", "deleted_at",
                     "embedding"):
            items[name].resize(9, axis=0)
        items["id"][7:9] = [b"tail-0", b"tail-1"]
        items.create_dataset("id_hash", data=np.arange(4, dtype=np.uint64), maxshape=(None,))
    with Store.open(v1_store, "a") as store:
        assert store.h5["items/id_hash"][:].tolist() == naive_hash(V1_IDS)
        assert any("uncommitted" in w for w in store.verify()["warnings"])
        store.enroll(_rows(1, 6), ["tail-0"])  # the tail's ids were never committed
        assert store.columns()["id"].tolist() == [*V1_IDS, "tail-0"]
        report = store.verify()
    assert report["ok"] and not report["warnings"], report


# The fault-injection child's preamble (argv: store, ack, plan, kill_at; SIGKILL before the
# kill_at-th HDF5 write), plus the two calls only a migration makes.
MIGRATE_CHILD = FAULT_CHILD.split("def vector")[0] + r"""
from gallery.store import idindex
idindex.HASH_BLOCK = 2  # several id_hash writes for 7 rows
h5py.Group.create_dataset = hook(h5py.Group.create_dataset)
h5py.Group.__delitem__ = hook(h5py.Group.__delitem__)
Store.open(store, "a").close()  # a writer migrates on open
"""


def test_migration_survives_sigkill_at_every_write(v1_store, tmp_path):
    """SIGKILL the migrating writer before each of its HDF5 writes in turn: the file stays v1
    (readers refuse it) or is a complete v2, and the next `gallery migrate` finishes the job."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    kill_at = 1
    while True:
        path = tmp_path / f"kill{kill_at}.h5"
        shutil.copy(v1_store, path)
        child = subprocess.run([sys.executable, "-c", MIGRATE_CHILD, str(path), "-", "[]", str(kill_at)],
                               capture_output=True, text=True, timeout=120, env=env)
        if child.returncode == 0:
            break  # kill_at is past the last write
        assert child.returncode == -signal.SIGKILL, child.stderr[-500:]
        with h5py.File(path, "r") as h5:
            version = int(h5.attrs["schema_version"])
        if version == 1:
            with pytest.raises(BadInput, match="run `gallery migrate"):
                Store.open(path)
        ok("migrate", path)
        with Store.open(path) as store:
            assert store.columns()["id"].tolist() == V1_IDS
            assert store.h5["items/id_hash"][:].tolist() == naive_hash(V1_IDS)
            report = store.verify()
            assert report["ok"] and not report["warnings"], report
        kill_at += 1
    assert kill_at > 8, kill_at  # creating the column, 4 blocks of hashes, flushes, version, history


def test_verify_reports_a_corrupted_id_hash(v1_store):
    ok("migrate", v1_store)
    with h5py.File(v1_store, "r+") as h5:
        h5["items/id_hash"][4] ^= np.uint64(1)
    damaged = run("verify", v1_store, "--json")
    assert damaged.exit_code == 1
    assert "id_hash does not match the id in 1 row(s), first row 4" in damaged.stdout
    with h5py.File(v1_store, "r+") as h5:
        del h5["items/id_hash"]
    with Store.open(v1_store) as store:
        assert "/items/id_hash is missing" in store.verify()["problems"]
