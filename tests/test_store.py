"""Store: round trip, bad input leaves the file byte-identical, tombstones, verify, migrations."""

from __future__ import annotations

import hashlib
import os
import shutil

import h5py
import numpy as np
import pytest

from cli_helpers import store_sha256
from gallery.errors import BadInput, GalleryError
from gallery.index import check_sidecar
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store, schema
from gallery.store.migrations import migrate_path
from gallery.search import search
from gallery.store import manifest as store_manifest  # hand edits keep its checksum valid

DIM = 12


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "g.h5"
    rng = np.random.default_rng(0)
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m1")) as store:
        x = rng.normal(size=(300, DIM)).astype(np.float32)
        store.enroll(x, [f"i{i}" for i in range(300)], [f"p{i % 30}" for i in range(300)], batch_size=64)
    return path


def test_python_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, DIM)).astype(np.float32) * 3
    ids = [f"item-{i}" for i in range(200)]
    people = [f"person{i % 20}" for i in range(200)]
    with Store.create(tmp_path / "s.h5", ModelInfo(version="v1", dim=DIM, model_id="m")) as store:
        result = store.enroll(x, ids, people, batch_size=50)
        assert result == {"event": "enroll", "model": "v1", "rows": 200, "start": 0, "stop": 200}
    with Store.open(tmp_path / "s.h5") as store:
        cols = store.columns()
        assert cols["id"].tolist() == ids and cols["identity"].tolist() == people
        assert set(cols["model"].tolist()) == {"v1"}
        np.testing.assert_allclose(store.embeddings(), l2_normalize(x), atol=1e-6)
        np.testing.assert_allclose(store.embeddings(np.array([5, 3, 5])), l2_normalize(x)[[5, 3, 5]], atol=1e-6)
        hits = search(store, x[:20] + 0.01, k=3)
        assert hits.ids[:, 0].tolist() == ids[:20]
        assert hits.identities[:, 0].tolist() == people[:20]
        assert check_sidecar(store.verify(), store)["ok"]
    with Store.open(tmp_path / "s.h5", "a") as store:
        store.remove(["item-0", "item-1"])
        assert search(store, x[:2], k=1).ids[:, 0].tolist() != ["item-0", "item-1"]
        assert store.count() == 198
        assert [h["event"] for h in store.history()] == ["init", "enroll", "remove"]


def _rejects(path, match, action):
    before = store_sha256(path)
    with Store.open(path, "a") as store:
        with pytest.raises(BadInput, match=match):
            action(store)
    assert store_sha256(path) == before  # nothing half-written


def test_bad_input_leaves_store_unchanged(store_path):
    rng = np.random.default_rng(2)
    good = rng.normal(size=(4, DIM)).astype(np.float32)
    ids = ["a", "b", "c", "d"]
    _rejects(store_path, "dimension 5", lambda s: s.enroll(np.ones((4, 5)), ids))
    nan = good.copy()
    nan[2, 3] = np.nan
    _rejects(store_path, "NaN or inf", lambda s: s.enroll(nan, ids))
    inf = good.copy()
    inf[0, 0] = np.inf
    _rejects(store_path, "NaN or inf", lambda s: s.enroll(inf, ids))
    _rejects(store_path, "duplicate ids in input: a", lambda s: s.enroll(good, ["a", "b", "a", "d"]))
    _rejects(store_path, "already in store.*i3", lambda s: s.enroll(good, ["i3", "x", "y", "z"]))
    _rejects(store_path, "unknown model version 'v9'", lambda s: s.enroll(good, ids, model_version="v9"))
    _rejects(store_path, "unknown ids: nope", lambda s: s.remove(["i1", "nope"]))
    _rejects(store_path, "all-zero", lambda s: s.enroll(np.zeros((4, DIM)), ids))


def test_missing_and_corrupt_files(tmp_path, store_path):
    with pytest.raises(BadInput, match="store not found"):
        Store.open(tmp_path / "absent.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    for attempt in (Store.open, migrate_path):
        with pytest.raises(BadInput, match="not a readable HDF5"):
            attempt(junk)
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = [1, 2]
    for attempt in (Store.open, migrate_path):
        with pytest.raises(BadInput, match="not a gallery store"):
            attempt(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(BadInput, match="not a readable HDF5"):
        Store.open(tmp_path / "text.h5")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BadInput, match="not a gallery store"):
        Store.open(tmp_path / "folder")
    # A segment cut short: verify --quick (sizes only) and verify name it; reads refuse.
    truncated = tmp_path / "trunc.h5"
    shutil.copytree(store_path, truncated)
    segment = sorted(truncated.glob("seg-*.h5"))[0]
    os.truncate(segment, 2000)
    with Store.open(truncated) as store:
        for quick in (True, False):
            report = store.verify(quick=quick)
            assert not report["ok"] and segment.name in report["problems"][0], report
        with pytest.raises(GalleryError, match=f"{segment.name} is damaged"):
            store.embeddings()
    with pytest.raises(BadInput, match="already exists"):
        Store.create(store_path, ModelInfo(version="v1", dim=DIM))


def test_removed_ids_never_return_nor_reused(store_path):
    with Store.open(store_path, "a") as store:
        x = store.embeddings()
        assert store.remove(["i5", "i6"])["removed"] == 2
        assert store.remove(["i5"]) == {"event": "remove", "removed": 0, "already_removed": 1, "ids": []}
        result = search(store, x[[5, 6]], k=300)
        assert not {"i5", "i6"} & set(result.ids.ravel().tolist())
        with pytest.raises(BadInput, match="never reused"):
            store.enroll(x[:1], ["i5"])
        assert check_sidecar(store.verify(), store)["removed"] == 2


def test_verify_detects_tampering(store_path):
    with Store.open(store_path) as store:
        assert check_sidecar(store.verify(), store)["ok"]
        segment = store_path / store.manifest["segments"][0]["file"]
    # Rewritten through HDF5 itself (a valid file, valid chunk checksums): only the
    # manifest's sha256 and the batch checksum can tell.
    with h5py.File(segment, "r+") as h5:
        h5["embedding"][100, 0] += 0.5
    with Store.open(store_path) as store:
        report = check_sidecar(store.verify(), store)
        assert store.verify(quick=True)["ok"]  # same size: --quick cannot see it
    assert not report["ok"] and report["problems"] == [f"segment file {segment.name} fails its checksum "
                                                       "(damaged on disk)"]
    manifest = store_manifest.load(store_path)
    manifest["segments"][0]["sha256"] = hashlib.sha256(segment.read_bytes()).hexdigest()
    store_manifest.commit(store_path, manifest, durable=False)
    with Store.open(store_path) as store:
        report = check_sidecar(store.verify(), store)
    assert not report["ok"] and f"checksum mismatch in rows 64..128 ({segment.name})" in report["problems"][0]
    manifest["committed"] = 290
    store_manifest.commit(store_path, manifest, durable=False)
    with Store.open(store_path) as store:
        assert not check_sidecar(store.verify(), store)["ok"]


def test_writer_lock_and_readers(store_path):
    from gallery.errors import StoreLocked

    writer = Store.open(store_path, "a")
    with pytest.raises(StoreLocked, match="locked by another writer"):
        Store.open(store_path, "a")
    with Store.open(store_path) as reader:  # readers are never blocked
        assert reader.committed == 300
        with pytest.raises(GalleryError, match="read-only"):
            reader.remove(["i1"])
    writer.close()
    Store.open(store_path, "a").close()  # released on close


def test_models_aliases_thresholds_and_mixed_versions(store_path):
    rng = np.random.default_rng(3)
    with Store.open(store_path, "a") as store:
        store.add_model(ModelInfo(version="v2", dim=DIM, model_id="m2", compatible_with="m1"))
        with pytest.raises(BadInput, match="dimension must be >= 1"):  # other dims: test_store_dims.py
            store.add_model(ModelInfo(version="v3", dim=0))
        with pytest.raises(BadInput, match="already exists"):
            store.add_model(ModelInfo(version="v2", dim=DIM))
        new = rng.normal(size=(10, DIM)).astype(np.float32)
        store.enroll(new, [f"n{i}" for i in range(10)], model_version="v2")
        store.set_active_model("v2")
        store.set_alias("prod", "v2")
        store.set_alias("previous", "v1")
        store.set_threshold("v2", "v1", 0.99)   # v2 queries vs v1 rows: strict
        store.set_threshold("v2", "v2", -1.0)   # v2 vs v2: accept everything
        assert store.resolve_version("prod") == "v2" and store.model("previous").version == "v1"
        result = search(store, np.vstack([new[:3], store.embeddings(np.array([0]))]), k=2)
        assert result.query_model == "v2"
        assert result.models[:3, 0].tolist() == ["v2"] * 3
        assert result.models[3, 0] == "v1" and result.thresholds[3, 0] == pytest.approx(0.99)
        assert not result.rejected[:3].any()
        explicit = search(store, new[:3] * -1, k=1, threshold=0.999)  # opposite vectors: rejected
        assert explicit.rejected.all() and explicit.match() == [None] * 3
        info = store.info()
        assert info["per_model"] == {"v1": 300, "v2": 10} and info["aliases"]["prod"] == "v2"
        assert check_sidecar(store.verify(), store)["ok"]
    with Store.open(store_path) as store:
        events = [h["event"] for h in store.history()]
    assert events == ["init", "enroll", "add_model", "enroll", "activate", "alias", "alias",
                      "threshold", "threshold"]


def test_export_matches_live_rows(tmp_path, store_path):
    with Store.open(store_path, "a") as store:
        store.remove(["i0", "i10"])
        live = np.flatnonzero(~store.columns()["deleted"])
        expected = store.embeddings(live)
        assert store.export(tmp_path / "out.npz")["rows"] == 298
        store.export(tmp_path / "out.h5")
    npz = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(npz["embeddings"], expected)
    assert "i0" not in npz["ids"].tolist() and npz["ids"][0] == "i1"
    with h5py.File(tmp_path / "out.h5") as h5:
        np.testing.assert_array_equal(h5["embeddings"][:], expected)
        assert h5["model_versions"].asstr()[0] == "v1"
    with Store.open(store_path) as store, pytest.raises(BadInput, match="must end in"):
        store.export(tmp_path / "out.csv")


def test_schema_versions(store_path):
    """A current store: migrate is a no-op. A newer one is refused (single-file v1/v2 stores
    and their conversion: test_store_migrate.py)."""
    assert migrate_path(store_path) == {"path": str(store_path), "schema_version": schema.SCHEMA_VERSION,
                                        "migrated": False}
    manifest = store_manifest.load(store_path)
    manifest["schema_version"] = schema.SCHEMA_VERSION + 1
    store_manifest.commit(store_path, manifest, durable=False)
    with pytest.raises(BadInput, match="newer than this gallery"):
        Store.open(store_path)


def test_float16_store(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, DIM)).astype(np.float32)
    with Store.create(tmp_path / "h.h5", ModelInfo(version="v1", dim=DIM), dtype="float16") as store:
        store.enroll(x, [str(i) for i in range(50)])
        with h5py.File(store.dir / store.manifest["segments"][0]["file"], "r", locking=False) as h5:
            assert h5["embedding"].dtype == np.float16
        assert search(store, x[:5], k=1).ids[:, 0].tolist() == ["0", "1", "2", "3", "4"]
        assert check_sidecar(store.verify(), store)["ok"]


def test_create_fills_before_the_store_appears_and_removes_dead_builds(tmp_path):
    """Store.create(fill=...) builds under `.NAME.PID.creating` and renames once filled; a new
    creation removes the builds of processes that no longer run, never a running one's."""
    import subprocess
    import sys

    path = tmp_path / "g.h5"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".g.h5.{int(done.stdout)}.creating"  # that process has exited
    live = tmp_path / f".g.h5.{os.getppid()}.creating"      # the process that started pytest runs
    other = tmp_path / ".h.h5.1.creating"                    # another store's build
    for build in (dead, live, other):
        build.mkdir()
        (build / "MANIFEST").write_text("{}")
    seen = {}

    def fill(st: Store) -> None:
        seen["absent while filling"] = not path.exists()
        st.enroll(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
        st.append_history({"event": "filled"})

    with Store.create(path, ModelInfo(version="v1", dim=4, model_id="m"), fill=fill) as st:
        assert st.columns()["id"].tolist() == ["a", "b", "c", "d"]
        assert [e["event"] for e in st.history()] == ["init", "enroll", "filled"]
    assert seen == {"absent while filling": True}
    assert not dead.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "g.h5"])

    def failing(st: Store) -> None:
        st.enroll(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Store.create(tmp_path / "f.h5", ModelInfo(version="v1", dim=4, model_id="m"), fill=failing)
    assert not (tmp_path / "f.h5").exists() and not list(tmp_path.glob(".f.h5.*"))
