"""search(rerank=F): approximate candidates re-scored exactly from the store's vectors."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.preprocess import l2_normalize
from gallery.search import search
from gallery.store import ModelInfo, Store

DIM = 32


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    centres = l2_normalize(rng.normal(size=(400, DIM)))
    x = l2_normalize(centres[rng.integers(0, 400, 8000)] + 0.8 * rng.normal(size=(8000, DIM)) / np.sqrt(DIM))
    st = Store.create(tmp_path / "g.h5", ModelInfo(version="v1", dim=DIM, model_id="m"), dtype="float16")
    st.enroll(x, [f"r{i}" for i in range(len(x))])
    st.remove([f"r{i}" for i in range(0, 8000, 9)])
    q = l2_normalize(centres[rng.integers(0, 400, 100)] + 0.8 * rng.normal(size=(100, DIM)) / np.sqrt(DIM))
    yield st, q
    st.close()


def _exact(st: Store, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    live = np.flatnonzero(~st.columns()["deleted"])
    sims = q.astype(np.float64) @ st.embeddings(live).astype(np.float64).T
    order = np.argsort(-sims, axis=1)[:, :k]
    return np.take_along_axis(sims, order, 1), live[order]


def _recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def test_rerank_returns_exact_scores_and_buys_back_pq_recall(store):
    st, q = store
    _, truth = _exact(st, q, 10)
    plain = search(st, q, k=10, kind="ivfpq", threshold=-1)
    reranked = search(st, q, k=10, kind="ivfpq", threshold=-1, rerank=8)
    vectors = st.embeddings()
    for qi in range(len(q)):  # every score is the exact cosine of that row, best first
        assert np.allclose(reranked.scores[qi], vectors[reranked.rows[qi]] @ q[qi], atol=1e-5)
        assert (np.diff(reranked.scores[qi]) <= 1e-7).all()
    assert not np.isin(reranked.rows, np.arange(0, 8000, 9)).any()
    assert _recall(truth, reranked.rows) > _recall(truth, plain.rows) + 0.1
    assert _recall(truth, reranked.rows) >= 0.9


def test_rerank_over_flat_changes_nothing_and_bad_values_are_refused(store):
    st, q = store
    exact_scores, truth = _exact(st, q, 5)
    got = search(st, q, k=5, kind="flat", rerank=3)
    np.testing.assert_array_equal(got.rows, truth)
    np.testing.assert_allclose(got.scores, exact_scores, atol=1e-5)
    with pytest.raises(BadInput, match="rerank must be >= 1"):
        search(st, q, k=5, rerank=0)
