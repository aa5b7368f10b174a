"""Scale-out: a gallery sharded across stores (faiss IndexShards) answers like one gallery."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.preprocess import l2_normalize
from gallery.shards import ShardedGallery, route
from gallery.store import ModelInfo, Store

DIM = 24


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(n // 10, DIM)))
    labels = rng.integers(0, len(centres), n)
    x = l2_normalize(centres[labels] + 0.6 * rng.normal(size=(n, DIM)) / np.sqrt(DIM))
    q = l2_normalize(centres[rng.integers(0, len(centres), 50)] + 0.6 * rng.normal(size=(50, DIM)) / np.sqrt(DIM))
    return x, q


def _shard_stores(tmp_path, x, ids, shards: int, model_id: str = "m") -> list:
    where = route(ids, shards)
    paths = []
    for s in range(shards):
        path = tmp_path / f"shard{s}.h5"
        pick = np.flatnonzero(where == s)
        with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id=model_id)) as st:
            st.enroll(x[pick], [ids[i] for i in pick], batch_size=500)
        paths.append(path)
    return paths


def test_route_is_stable_and_balanced():
    ids = [f"person{i}/img{i % 7}.jpg" for i in range(6000)]
    a, b = route(ids, 4), route(list(ids), 4)
    assert (a == b).all() and set(a.tolist()) == {0, 1, 2, 3}
    counts = np.bincount(a, minlength=4)
    assert counts.min() > 0.9 * 1500 and counts.max() < 1.1 * 1500
    with pytest.raises(BadInput):
        route(ids, 0)


def test_sharded_flat_equals_brute_force_over_all_rows(tmp_path):
    x, q = _data(3000, seed=1)
    ids = [f"item{i}" for i in range(3000)]
    paths = _shard_stores(tmp_path, x, ids, 3)
    with Store.open(paths[1], "a") as st:  # tombstones in one shard stay invisible
        removed = st.columns()["id"][:5].tolist()
        st.remove(removed)
    alive = np.array([i not in set(removed) for i in ids])
    sims = q.astype(np.float64) @ x[alive].astype(np.float64).T  # independent reference
    order = np.argsort(-sims, axis=1)[:, :10]
    expected = np.array(ids)[alive][order]
    with ShardedGallery(paths, kind="flat") as gallery:
        assert gallery.ntotal == 3000 - 5
        res = gallery.search(q, k=10)
    assert res.ids.tolist() == expected.tolist()
    np.testing.assert_allclose(res.scores, np.take_along_axis(sims, order, 1), atol=1e-5)
    # (shard, row) point back into the right store.
    with Store.open(paths[res.shards[0, 0]]) as st:
        assert st.columns()["id"][res.rows[0, 0]] == res.ids[0, 0]


def test_sharded_ivf_recall(tmp_path):
    x, q = _data(6000, seed=2)
    ids = [f"item{i}" for i in range(6000)]
    paths = _shard_stores(tmp_path, x, ids, 2)
    order = np.argsort(-(q @ x.T), axis=1)[:, :10]
    expected = np.array(ids)[order]
    with ShardedGallery(paths, kind="ivf") as gallery:
        got = gallery.search(q, k=10).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(expected, got)])
    assert recall >= 0.95


def test_shards_of_different_models_or_dims_refused(tmp_path):
    x, _ = _data(200, seed=3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _shard_stores(tmp_path / "a", x, [f"a{i}" for i in range(200)], 1, "model-A")
    b = _shard_stores(tmp_path / "b", x, [f"b{i}" for i in range(200)], 1, "model-B")
    with pytest.raises(BadInput, match="different models"):
        ShardedGallery(a + b)
    with pytest.raises(BadInput, match="no shard"):
        ShardedGallery([])
    with ShardedGallery(a) as one, pytest.raises(BadInput, match="dimension"):
        one.search(np.ones((1, DIM + 1), np.float32))
