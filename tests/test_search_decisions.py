"""Open-set decisions in a mixed-version gallery: a query matches the hit with the largest
margin over its own pair's threshold, not just whatever ranks first."""

from __future__ import annotations

import numpy as np

from gallery.preprocess import l2_normalize
from gallery.search import SearchResult
from gallery.store import ModelInfo, Store


def _naive_match(scores, thresholds, identities, rows):
    out = []
    for q in range(len(scores)):
        ok = [j for j in range(scores.shape[1]) if rows[q, j] >= 0 and scores[q, j] >= thresholds[q, j]]
        margin = [scores[q, j] - (thresholds[q, j] if np.isfinite(thresholds[q, j]) else 0) for j in ok]
        out.append(identities[q, ok[int(np.argmax(margin))]] if ok else None)
    return out


def test_match_equals_a_naive_loop_on_random_results():
    rng = np.random.default_rng(0)
    nq, k = 300, 6
    scores = -np.sort(-rng.uniform(-1, 1, (nq, k)), axis=1).astype(np.float32)
    rows = np.where(rng.uniform(size=(nq, k)) < 0.1, -1, rng.integers(0, 1000, (nq, k)))
    models = rng.choice(["v1", "v2"], (nq, k)).astype(object)
    thresholds = np.where(models == "v1", 0.2, 0.5).astype(np.float32)
    thresholds[rng.uniform(size=(nq, k)) < 0.1] = -np.inf  # pairs with no calibrated threshold
    identities = rng.choice([f"p{i}" for i in range(50)], (nq, k)).astype(object)
    result = SearchResult("v2", scores, rows, identities, identities, models, thresholds)
    expected = _naive_match(scores, thresholds, identities, rows)
    assert result.match() == expected
    assert result.rejected.tolist() == [m is None for m in expected]
    assert 0 < result.rejected.sum() < nq


def test_lower_v1_hit_that_clears_its_threshold_beats_a_failing_v2_top_hit(tmp_path):
    rng = np.random.default_rng(1)
    query = l2_normalize(rng.normal(size=(1, 16)))[0]
    other = l2_normalize(rng.normal(size=16) - 2 * query)

    def at_cosine(c: float) -> np.ndarray:  # a unit vector at cosine c from the query
        ortho = l2_normalize(other - (other @ query) * query)
        return c * query + np.sqrt(1 - c * c) * ortho

    with Store.create(tmp_path / "g.h5", ModelInfo(version="v1", dim=16, model_id="m1")) as st:
        st.enroll(np.stack([at_cosine(0.45)]), ["alice-v1"], ["alice"])
        st.add_model(ModelInfo(version="v2", dim=16, model_id="m2", compatible_with="m1"))
        st.enroll(np.stack([at_cosine(0.55)]), ["bob-v2"], ["bob"], model_version="v2")
        st.set_active_model("v2")
        st.set_threshold("v2", "v2", 0.60)  # v2->v2 scores run high: bob at 0.55 is not a match
        st.set_threshold("v2", "v1", 0.30)  # cross-model scores run low: alice at 0.45 is
        result = st.search(query[None], k=2)
        assert result.identities[0].tolist() == ["bob", "alice"]  # bob ranks first by raw score
        assert result.match() == ["alice"] and not result.rejected[0]
        record = result.to_records()[0]
        assert record["match"] == "alice" and [h["identity"] for h in record["hits"]] == ["alice"]
        st.set_threshold("v2", "v1", 0.50)  # now neither clears its own threshold
        assert st.search(query[None], k=2).match() == [None]
