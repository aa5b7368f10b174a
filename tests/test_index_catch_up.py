"""A stale index is caught up, not rebuilt, after appends and a few removals: removed
rows stay in the index as `dead` and every search drops them, fetching that many
extra candidates. Answers must equal brute force over the live rows."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.index import check_sidecar
import gallery.index.sidecar as sidecar
from gallery.index import refresh_after_write, sidecar_state, store_index
from gallery.preprocess import l2_normalize
from gallery.search import search
from gallery.store import ModelInfo, Store

DIM = 24


@pytest.fixture
def store(tmp_path):
    x = l2_normalize(np.random.default_rng(0).normal(size=(3000, DIM)))
    st = Store.create(tmp_path / "g.h5", ModelInfo(version="v1", dim=DIM, model_id="m"))
    st.enroll(x, [f"r{i}" for i in range(len(x))])
    yield st, x
    st.close()


def _brute_force(st: Store, q: np.ndarray, k: int) -> np.ndarray:
    live = np.flatnonzero(~st.columns()["deleted"])
    return live[np.argsort(-(q @ st.embeddings(live).T), axis=1)[:, :k]]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_removals_are_masked_and_never_returned(store, kind):
    st, x = store
    built = store_index(st, kind=kind, nprobe=64) if kind == "ivf" else store_index(st, kind=kind)
    gone = np.arange(0, 3000, 50)  # 60 rows, each the exact top hit of its own query
    st.remove([f"r{i}" for i in gone])
    st.enroll(l2_normalize(x[:20] + 0.05), [f"n{i}" for i in range(20)])
    index = store_index(st, kind=kind)
    assert index.meta["built_at"] == built.meta["built_at"]  # not rebuilt
    assert index.meta["dead"] == 60 and index.count == 3020 and sidecar_state(st)[0] == "fresh"
    q = np.vstack([x[gone], x[:20]])
    got = search(st, q, k=10, kind=kind, threshold=-1).rows
    assert not np.isin(got, gone).any() and (got >= 0).all()
    if kind == "flat":
        np.testing.assert_array_equal(got, _brute_force(st, q, 10))
        reranked = search(st, q, k=10, kind=kind, threshold=-1, rerank=3).rows
        np.testing.assert_array_equal(reranked, got)


def test_too_many_removals_rebuild(store, monkeypatch):
    st, x = store
    built = store_index(st, kind="flat")
    monkeypatch.setattr(sidecar, "DEAD_MAX", 10)
    st.remove([f"r{i}" for i in range(11)])
    index = store_index(st)
    assert index.meta["built_at"] != built.meta["built_at"] and index.count == 2989
    assert index.meta["dead"] == 0


def test_writer_catches_the_sidecar_up_so_readers_find_it_fresh(store):
    st, x = store
    store_index(st, kind="ivf")
    st.enroll(l2_normalize(x[:5] + 0.1), [f"n{i}" for i in range(5)])
    st.remove(["r1", "r2"])
    assert sidecar_state(st)[0] == "stale"  # the store alone leaves its index to the layer above...
    assert refresh_after_write(st) == "extended"  # ...which catches it up (Gallery's writes do)
    assert sidecar_state(st)[0] == "fresh"  # no search in between: the writer did it
    with Store.open(st.path) as reader:  # another process's view: loads, does not rebuild
        assert sidecar_state(reader)[0] == "fresh" and store_index(reader).meta["dead"] == 2
        assert check_sidecar(reader.verify(), reader)["ok"]  # a fresh index may hold masked rows: not damage


def test_sharded_search_never_returns_a_masked_row(tmp_path, store):
    from gallery.shards import ShardedGallery

    st, x = store
    store_index(st, kind="flat")
    st.remove(["r5"])
    store_index(st)  # leaves a sidecar holding r5 as a masked row
    st.close()
    with ShardedGallery([st.path]) as sharded:
        assert "r5" not in sharded.search(x[5:6], k=3).ids.ravel().tolist()


def test_enrol_and_remove_leave_a_fresh_sidecar(store):
    """The writer's catch-up after a commit (what Gallery.enroll/remove and the service's
    writes run)."""
    st, x = store
    st.enroll(x[:2] * -1, ["a", "b"])
    assert refresh_after_write(st) == "missing"  # no index yet: nothing to do
    store_index(st, kind="ivf")
    st.enroll(l2_normalize(x[:3] + 0.2), ["n0", "n1", "n2"])
    assert refresh_after_write(st) == "extended" and sidecar_state(st)[0] == "fresh"
    st.remove(["r9"])
    assert refresh_after_write(st) == "extended" and sidecar_state(st)[0] == "fresh"


def test_the_gallery_catches_the_sidecar_up_after_its_writes(tmp_path):
    import gallery

    x = l2_normalize(np.random.default_rng(4).normal(size=(600, DIM)))
    g = gallery.create(tmp_path / "g.h5", dim=DIM, model_id="m")
    assert g.enroll(x[:500], [f"r{i}" for i in range(500)])["index"] == "missing"
    g.reindex(index="ivf")
    assert g.enroll(x[500:], [f"n{i}" for i in range(100)])["index"] == "extended"
    assert g.remove(["r7"])["index"] == "extended"
    assert g.verify()["index"] == "fresh" and g.verify(quick=True)["index"] == "unchecked"
    hits = g.search(x[7:8], k=1, accept_uncalibrated=True)
    assert hits.ids[0, 0] != "r7" and hits.ids[0, 0] in {f"r{i}" for i in range(500)} | {f"n{i}" for i in range(100)}


def test_a_sidecar_from_the_previous_release_is_still_caught_up(store):
    """Sidecars written before `chain`/`excluded` carry only a prefix digest."""
    import json

    from gallery.index.sidecar import prefix_digest, record_path
    from gallery.store.reads import snapshot

    st, x = store
    built = store_index(st, kind="flat")
    meta_path = record_path(st)
    meta = json.loads(meta_path.read_text())
    committed, chain, deleted = snapshot(st)
    for key in ("chain", "excluded", "dead"):
        del meta[key]
    meta["prefix"] = prefix_digest(committed, chain, deleted)
    meta_path.write_text(json.dumps(meta))
    st.enroll(l2_normalize(x[:4] + 0.3), [f"n{i}" for i in range(4)])
    assert refresh_after_write(st) == "extended"
    caught_up = store_index(st)
    assert caught_up.meta["built_at"] == built.meta["built_at"] and caught_up.count == 3004
    assert "prefix" not in caught_up.meta and caught_up.meta["excluded"] == 0
