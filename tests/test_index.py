"""faiss index: exactness of flat against numpy, recall of IVF/HNSW, store sidecar life cycle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.index import IndexParams, build, default_kind, forget, sidecar_path, sidecar_state, store_index
from gallery.index.sidecar import record_path
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store, items
from gallery.search import search


def _gallery_like(n: int, dim: int, identities: int, noise: float, seed: int):
    """Unit vectors around identity centres (intra-identity cosine ~0.78), like face embeddings."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(identities, dim)))
    labels = rng.integers(0, identities, n)
    x = l2_normalize(centres[labels] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim))
    q_labels = rng.integers(0, identities, 200)
    q = l2_normalize(centres[q_labels] + noise * rng.normal(size=(200, dim)) / np.sqrt(dim))
    return x, q


def _recall(reference: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(reference, got)]))


def test_flat_equals_bruteforce_numpy():
    rng = np.random.default_rng(1)
    x = l2_normalize(rng.normal(size=(3000, 48)))
    q = l2_normalize(rng.normal(size=(40, 48)))
    rows = rng.permutation(10_000)[:3000]  # faiss ids are arbitrary store row numbers
    scores, ids = build(x, rows, IndexParams("flat")).search(q, 10)
    sims = q.astype(np.float64) @ x.astype(np.float64).T        # independent reference
    order = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, rows[order])
    np.testing.assert_allclose(scores, np.take_along_axis(sims, order, 1), atol=1e-5)


def test_ivf_and_hnsw_recall_at_10_on_20k():
    x, q = _gallery_like(20_000, 64, 2000, 0.8, seed=2)
    rows = np.arange(len(x))
    _, reference = build(x, rows, IndexParams("flat")).search(q, 10)
    for kind in ("ivf", "hnsw"):
        _, got = build(x, rows, IndexParams(kind)).search(q, 10)  # default parameters
        assert _recall(reference, got) >= 0.95, kind


def test_ivf_nprobe_knob_on_uniform_vectors():
    """Uniform random vectors are IVF's worst case; more probes buy the recall back."""
    rng = np.random.default_rng(3)
    x = l2_normalize(rng.normal(size=(20_000, 32)))
    q = l2_normalize(rng.normal(size=(100, 32)))
    rows = np.arange(len(x))
    _, reference = build(x, rows, IndexParams("flat")).search(q, 10)
    index = build(x, rows, IndexParams("ivf"))
    low = _recall(reference, index.search(q, 10)[1])
    index.set_search_params(nprobe=index.meta["params"]["nlist"] // 2)
    high = _recall(reference, index.search(q, 10)[1])
    assert high >= 0.95 and high > low


def test_ivfpq_builds_and_returns_real_rows():
    x, q = _gallery_like(3000, 32, 300, 0.5, seed=4)
    index = build(x, np.arange(3000), IndexParams("ivfpq"))
    p = index.meta["params"]
    assert 32 % p["pq_m"] == 0 and 1 <= p["pq_bits"] <= 8
    _, reference = build(x, np.arange(3000), IndexParams("flat")).search(q, 10)
    _, got = index.search(q, 10)
    assert got.min() >= 0 and got.max() < 3000
    assert _recall(reference, got) > 0.3  # lossy by design; far above chance (10/3000)


def test_defaults_and_bad_kind():
    assert default_kind(1000) == "flat" and default_kind(1_000_000) == "ivf"
    assert default_kind(50_000_000) == "ivfpq"
    with pytest.raises(BadInput, match="unknown index kind 'annoy'"):
        IndexParams("annoy").resolved(10, 8)


def _store(tmp_path, n=500, dim=16):
    rng = np.random.default_rng(5)
    store = Store.create(tmp_path / "g.h5", ModelInfo(version="v1", dim=dim, model_id="m"))
    x = rng.normal(size=(n, dim)).astype(np.float32)
    store.enroll(x, [f"i{i}" for i in range(n)], [f"p{i % 25}" for i in range(n)], batch_size=128)
    return store, x


def test_sidecar_fresh_stale_rebuilt(tmp_path):
    store, x = _store(tmp_path)
    assert sidecar_state(store)[0] == "missing"
    first = store_index(store)
    assert sidecar_state(store)[0] == "fresh" and first.count == 500
    forget(store)  # drop the in-memory copy: the sidecar is loaded, not rebuilt
    again = store_index(store)
    assert again.meta["built_at"] == first.meta["built_at"]
    items.enroll(store, x[:3] + 1.0, ["n0", "n1", "n2"])  # no catch-up of the sidecar (the layer above does that)
    assert sidecar_state(store)[0] == "stale"
    assert store_index(store).count == 503 and sidecar_state(store)[0] == "fresh"
    items.remove(store, ["i7"])
    assert sidecar_state(store)[0] == "stale"
    caught_up = store_index(store)  # one removal: masked, not a rebuild (tests/test_index_catch_up.py)
    assert caught_up.count == 503 and caught_up.meta["dead"] == 1
    meta = json.loads(record_path(store).read_text())
    assert meta["rows"] == 503 and meta["checksum"] == store.content_checksum()
    assert store_index(store, rebuild=True).count == 502
    store.close()


def test_tombstoned_rows_never_returned(tmp_path):
    store, x = _store(tmp_path)
    search(store, x[:5], k=5)  # build the index before the removal
    gone = [f"i{i}" for i in range(0, 500, 3)]
    store.remove(gone)
    result = search(store, x, k=20, kind="hnsw")
    assert not set(result.ids.ravel().tolist()) & set(gone)
    assert (result.rows >= 0).all()
    store.close()


def test_corrupt_sidecar_is_rebuilt(tmp_path):
    store, x = _store(tmp_path)
    store_index(store)
    sidecar_path(store).write_bytes(b"garbage")
    forget(store)  # the next search reads the sidecar
    result = search(store, x[:4], k=1)
    assert result.ids[:, 0].tolist() == ["i0", "i1", "i2", "i3"]
    store.close()


def test_appended_rows_extend_the_index_instead_of_rebuilding(tmp_path):
    store, x = _store(tmp_path, n=2000)
    for seed, kind in enumerate(("hnsw", "ivf")):
        first = store_index(store, kind=kind, rebuild=True)
        built_at = first.meta["built_at"]
        extra = np.random.default_rng(60 + seed).normal(size=(50, 16)).astype(np.float32)
        store.enroll(extra, [f"{kind}-x{i}" for i in range(50)])
        forget(store)  # from the stale sidecar on disk, not the in-memory copy
        grown = store_index(store, kind=kind)
        assert grown.meta["built_at"] == built_at and "extended_at" in grown.meta
        assert grown.count == store.count() and sidecar_state(store)[0] == "fresh"
        hits = search(store, extra, k=1, kind=kind)
        assert hits.ids[:, 0].tolist() == [f"{kind}-x{i}" for i in range(50)]
    store.remove(["i3"])  # a tombstone in the indexed rows: masked (tests/test_index_catch_up.py)
    masked = store_index(store, kind="ivf")
    assert masked.meta["dead"] == 1 and masked.count == store.count() + 1
    big = np.random.default_rng(8).normal(size=(5000, 16)).astype(np.float32)
    store.enroll(big, [f"b{i}" for i in range(5000)])  # more than doubles: IVF retrained
    assert "extended_at" not in store_index(store, kind="ivf").meta
    store.close()


def test_verify_and_reindex_a_lying_sidecar(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    store, _ = _store(tmp_path)
    store_index(store)
    meta_path = record_path(store)
    meta = json.loads(meta_path.read_text())
    meta["count"] = 12  # claims fresh, holds the wrong number of vectors
    meta_path.write_text(json.dumps(meta))
    store.close()
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "g.h5")])
    assert result.exit_code == 1 and "gallery reindex" in result.stdout
    result = CliRunner().invoke(app, ["reindex", str(tmp_path / "g.h5"), "--index", "hnsw", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["count"] == 500
    assert CliRunner().invoke(app, ["verify", str(tmp_path / "g.h5")]).exit_code == 0
