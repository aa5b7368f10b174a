"""A stale index is caught up, not rebuilt, after appends and a few removals: removed
rows stay in the index as `dead` and every search drops them, fetching that many
extra candidates. Answers must equal brute force over the live rows."""

from __future__ import annotations

import numpy as np
import pytest

import gallery.index.sidecar as sidecar
from gallery.index import sidecar_state
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
    built = st.index(kind=kind, nprobe=64) if kind == "ivf" else st.index(kind=kind)
    gone = np.arange(0, 3000, 50)  # 60 rows, each the exact top hit of its own query
    st.remove([f"r{i}" for i in gone])
    st.enroll(l2_normalize(x[:20] + 0.05), [f"n{i}" for i in range(20)])
    index = st.index(kind=kind)
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
    built = st.index(kind="flat")
    monkeypatch.setattr(sidecar, "DEAD_MAX", 10)
    st.remove([f"r{i}" for i in range(11)])
    index = st.index()
    assert index.meta["built_at"] != built.meta["built_at"] and index.count == 2989
    assert index.meta["dead"] == 0


def test_writer_catches_the_sidecar_up_so_readers_find_it_fresh(store):
    st, x = store
    st.index(kind="ivf")
    st.enroll(l2_normalize(x[:5] + 0.1), [f"n{i}" for i in range(5)])
    st.remove(["r1", "r2"])
    assert sidecar_state(st)[0] == "fresh"  # no search in between: the writer did it
    with Store.open(st.path) as reader:  # another process's view: loads, does not rebuild
        assert sidecar_state(reader)[0] == "fresh" and reader.index().meta["dead"] == 2
        assert reader.verify()["ok"]  # a fresh index may hold masked rows: not damage


def test_sharded_search_never_returns_a_masked_row(tmp_path, store):
    from gallery.shards import ShardedGallery

    st, x = store
    st.index(kind="flat")
    st.remove(["r5"])
    st.index()  # leaves a sidecar holding r5 as a masked row
    st.close()
    with ShardedGallery([st.path]) as sharded:
        assert "r5" not in sharded.search(x[5:6], k=3).ids.ravel().tolist()


def test_enrol_and_remove_leave_a_fresh_sidecar(store):
    st, x = store
    assert st.enroll(x[:2] * -1, ["a", "b"])["index"] == "missing"  # no index yet: nothing to do
    st.index(kind="ivf")
    assert st.enroll(l2_normalize(x[:3] + 0.2), ["n0", "n1", "n2"])["index"] == "extended"
    assert sidecar_state(st)[0] == "fresh"
    assert st.remove(["r9"])["index"] == "extended" and sidecar_state(st)[0] == "fresh"


def test_a_sidecar_from_the_previous_release_is_still_caught_up(store):
    """Sidecars written before `chain`/`excluded` carry only a prefix digest."""
    import json

    from gallery.index.sidecar import prefix_digest, record_path
    from gallery.store.reads import snapshot

    st, x = store
    built = st.index(kind="flat")
    meta_path = record_path(st)
    meta = json.loads(meta_path.read_text())
    committed, chain, deleted = snapshot(st)
    for key in ("chain", "excluded", "dead"):
        del meta[key]
    meta["prefix"] = prefix_digest(committed, chain, deleted)
    meta_path.write_text(json.dumps(meta))
    st.invalidate()
    assert st.enroll(l2_normalize(x[:4] + 0.3), [f"n{i}" for i in range(4)])["index"] == "extended"
    caught_up = st.index()
    assert caught_up.meta["built_at"] == built.meta["built_at"] and caught_up.count == 3004
    assert "prefix" not in caught_up.meta and caught_up.meta["excluded"] == 0
