"""Index builds over a store read it block by block: same answers as an in-memory
build and as numpy brute force, tombstones left out, a training sample instead of
every row, and a clear refusal when the index cannot fit in memory."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import gallery.index.core as index_core
import gallery.store.ranges as ranges
from cli.main import app
from gallery.errors import BadInput
from gallery.index import IndexParams, build, default_kind, estimate_bytes, train_rows
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store
from gallery.store.columns import column_range
from gallery.index import store_index

DIM = 32


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(n // 10, DIM)))
    return l2_normalize(centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, DIM)) / np.sqrt(DIM))


@pytest.fixture
def store(tmp_path):
    st = Store.create(tmp_path / "g.h5", ModelInfo(version="v1", dim=DIM, model_id="synthetic"))
    st.enroll(_clustered(6000, 0), [f"r{i}" for i in range(6000)])
    st.remove([f"r{i}" for i in range(0, 6000, 7)])  # tombstones spread over every block
    yield st
    st.close()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 500 rows; records the largest block any read asked for."""
    seen = []
    real = ranges.embeddings_between

    def spy(store, lo, hi):
        seen.append(hi - lo)
        return real(store, lo, hi)

    monkeypatch.setattr(ranges, "BLOCK_ROWS", 500)
    monkeypatch.setattr(ranges, "embeddings_between", spy)
    monkeypatch.setattr(Store, "embeddings", lambda *a, **k: pytest.fail("a build read every vector at once"))
    return seen


def _brute_force(store: Store, q: np.ndarray, k: int) -> np.ndarray:
    live = np.flatnonzero(~store.columns()["deleted"])
    emb = np.asarray(column_range(store, "embedding", 0, store.committed), np.float64)[live]
    return live[np.argsort(-(q @ emb.T), axis=1)[:, :k]]


def test_flat_built_block_by_block_equals_brute_force(store, small_blocks):
    q = _clustered(50, 1)
    index = store_index(store, kind="flat", rebuild=True)
    assert max(small_blocks) <= 500 and index.count == int((~store.columns()["deleted"]).sum())
    np.testing.assert_array_equal(index.search(q, 10)[1], _brute_force(store, q, 10))


@pytest.mark.parametrize("kind", ["ivf", "ivfsq8"])
def test_ivf_trained_on_a_sample_keeps_recall(store, small_blocks, monkeypatch, kind):
    q = _clustered(100, 2)
    want = _brute_force(store, q, 10)

    def recall(train: int) -> float:
        monkeypatch.setattr(index_core, "MIN_TRAIN", train)
        index = store_index(store, kind=kind, rebuild=True, nlist=20, nprobe=8)
        assert index.meta["train_rows"] == min(train, 5142) and max(small_blocks) <= 500
        got = index.search(q, 10)[1]
        assert not np.isin(got, np.arange(0, 6000, 7)).any()  # tombstones are never indexed
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]))

    sampled, everything = recall(1000), recall(10**6)  # 1000 of 5142 live rows vs all of them
    assert sampled >= everything - 0.05 and sampled > 0.7, (sampled, everything)


def test_store_build_matches_in_memory_build(store):
    live = np.flatnonzero(~store.columns()["deleted"])
    vectors = np.asarray(column_range(store, "embedding", 0, store.committed), np.float32)[live]
    q = _clustered(40, 3)
    for kind in ("ivfsq8", "ivfpq"):
        from_store = store_index(store, kind=kind, rebuild=True).search(q, 10)
        in_memory = build(vectors, live, IndexParams(kind)).search(q, 10)
        np.testing.assert_array_equal(from_store[1], in_memory[1])  # same sample, same k-means seed


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfsq8", "ivfpq", "hnsw"])
def test_memory_estimate_matches_the_serialised_index(kind):
    """The refusal below is only as good as the estimate: compare it with faiss's own bytes."""
    import faiss

    x = l2_normalize(np.random.default_rng(4).normal(size=(20_000, 64)))
    p = IndexParams(kind).resolved(len(x), 64)
    actual = faiss.serialize_index(build(x, np.arange(len(x)), p).faiss).size
    estimate = estimate_bytes(p, len(x), 64) - train_rows(p, len(x)) * 64 * 4  # the sample is freed
    assert 0.85 < estimate / actual < 1.15


def test_default_kinds_by_size():
    assert [default_kind(n) for n in (1000, 1_000_000, 10_000_000, 50_000_000)] == \
        ["flat", "ivf", "ivfsq8", "ivfpq"]


def test_build_that_cannot_fit_is_refused_before_any_work(store, monkeypatch):
    monkeypatch.setattr(index_core, "MIN_TRAIN", 1000)  # a sample smaller than the gallery, as at scale
    monkeypatch.setattr(index_core, "TRAIN_PER_CELL", 5)
    flat_bytes = estimate_bytes(IndexParams("flat").resolved(5142, DIM), 5142, DIM) + 5142 * DIM * 4
    monkeypatch.setattr(index_core, "available_bytes", lambda: int(flat_bytes * 0.8))
    monkeypatch.setattr(ranges, "embeddings_between", lambda *a: pytest.fail("read before refusing"))
    with pytest.raises(BadInput, match=r"a flat index over 5,142 x 32 needs .* use --index ivfsq8 or ivfpq"):
        store_index(store, kind="flat", rebuild=True)
    store.close()
    result = CliRunner().invoke(app, ["reindex", str(store.path), "--index", "flat"])
    assert result.exit_code == 2 and "MiB of memory is available" in result.output
    assert len(result.output.strip().splitlines()) == 1
