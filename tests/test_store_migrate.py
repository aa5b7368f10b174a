"""`gallery migrate`: single-file v1/v2 stores (real files made by the old code, tests/data)
become the v3 directory under the same path, with every committed row, tombstone, model,
alias, threshold, lineage, backfill overlay (4-field and older 3-field `state`) and plan;
and the conversion survives SIGKILL at its write/rename/fsync calls (sampled in
test_fault_syscalls.py's `migrate` scenario, every call in bench/fault_sweep.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_helpers import ok, run
from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.index import check_sidecar
from gallery.preprocess import l2_normalize
from gallery.store import Store
from gallery.store.migrations import backup_path, work_path
from gallery.store.columns import column_range
from gallery.search import search

DATA = Path(__file__).parent / "data"
V1_IDS = ["a0", "a1", "a2", "b0", "b1", "é-5", "日本-6"]      # a1 is removed
V2_IDS = ["a0", "a1", "a2", "b0", "b1", "é-5", "日本-6", "c7", "c8", "c9"]


def naive_hash(ids) -> list[int]:
    return [int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids]


def _unzip(name: str, out: Path) -> Path:
    with gzip.open(DATA / name) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _legacy(path: Path) -> dict:
    """What the old file holds, read with plain h5py: the independent reference."""
    with h5py.File(path, "r", locking=False) as h5:
        items = h5["items"]
        n = int(items.attrs["committed"])
        raw = {"ids": [v.decode() for v in items["id"][:n].tolist()],
               "embedding": items["embedding"][:n].astype(np.float32),
               "deleted": items["deleted"][:n].astype(bool), "active": str(h5.attrs["active_model"]),
               "models": sorted(h5["models"]), "aliases": json.loads(h5.attrs["aliases"])}
        if "rollout" in h5:
            g = h5["rollout/backfill/v2"]
            committed, cursor, plan_len = (int(v) for v in g.attrs["state"][:3])
            raw.update(parents=json.loads(h5["rollout"].attrs["parents"]), overlay_rows=g["row"][:committed],
                       overlay_emb=g["embedding"][:committed].astype(np.float32), cursor=cursor,
                       plan=g["plan"][:plan_len])
        return raw


@pytest.mark.parametrize("fixture", ["store_v2_backfill.h5.gz", "store_v2_state3.h5.gz"])
def test_v2_store_with_backfill_migrated(tmp_path, fixture):
    path = _unzip(fixture, tmp_path / "faces.h5")
    before, original = _legacy(path), file_sha256(path)
    refused = run("info", path)
    assert refused.exit_code == 2 and f"run `gallery migrate {path}`" in refused.stderr
    result = ok("migrate", path, "--json")
    assert result["migrated"] and result["from"] == 2 and path.is_dir()
    assert file_sha256(backup_path(path)) == original and not work_path(path).exists()
    with Store.open(path) as st:
        cols = st.columns()
        assert cols["id"].tolist() == V2_IDS == before["ids"]
        np.testing.assert_array_equal(cols["deleted"], before["deleted"])
        assert (st.active_model, st.model_versions(), st.aliases) == (before["active"], before["models"],
                                                                       before["aliases"])
        assert st.model("v2").thresholds == {"v1": 0.25} and st.manifest["parents"] == before["parents"]
        # The query model (v2) sees the backfilled rows, v1 the originals (rollback is exact).
        expected = before["embedding"].copy()
        expected[before["overlay_rows"]] = before["overlay_emb"]
        np.testing.assert_allclose(st.embeddings(), expected, atol=1e-6)
        from gallery.store.reads import embeddings
        np.testing.assert_allclose(embeddings(st, None, "v1"), before["embedding"], atol=1e-6)
        assert cols["model"][before["overlay_rows"]].tolist() == ["v2"] * len(before["overlay_rows"])
        from gallery.store import overlays
        rows, cursor, _ = overlays.plan(st, "v2")
        assert rows.tolist() == before["plan"].tolist() and cursor == before["cursor"] == 4
        assert st.history()[-1]["event"] == "migrate" and check_sidecar(st.verify(), st)["ok"]
    assert ok("migrate", path, "--json")["migrated"] is False  # already current: nothing to do


def test_v1_store_migrated_gets_id_hashes(tmp_path):
    path = _unzip("store_v1.h5.gz", tmp_path / "old.h5")
    before = _legacy(path)
    with pytest.raises(BadInput, match=f"single-file store .*run `gallery migrate {path}`"):
        Store.open(path)
    assert ok("migrate", path, "--json")["from"] == 1
    queries = np.random.default_rng(9).normal(size=(5, 8)).astype(np.float32)
    with Store.open(path) as st:
        assert st.columns()["id"].tolist() == V1_IDS and st.count() == 6
        assert column_range(st, "id_hash", 0, st.committed).tolist() == naive_hash(V1_IDS)
        scores = l2_normalize(queries) @ before["embedding"].T
        scores[:, before["deleted"]] = -np.inf
        reference = [[V1_IDS[i] for i in np.argsort(-row, kind="stable")[:2]] for row in scores]
        assert search(st, queries, k=2).ids.tolist() == reference
        assert check_sidecar(st.verify(), st)["ok"]
    with Store.open(path, "a") as st:  # the migrated store still refuses live, removed, non-ASCII ids
        for taken in ("b0", "a1", "日本-6"):
            with pytest.raises(BadInput, match=f"already in store .*: {taken}$"):
                st.enroll(np.ones((2, 8)), ["fresh", taken])
