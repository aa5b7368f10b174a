"""Open-set decisions in a mixed-version gallery: a query matches the hit with the largest
margin over its own pair's threshold, not just whatever ranks first; a hit of a pair
without a threshold (uncalibrated) never wins unless the caller opts in."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.preprocess import l2_normalize
from gallery.search import SearchResult
from gallery.store import ModelInfo, Store
from gallery.search import search


def _naive_match(scores, thresholds, identities, rows, accept_uncalibrated=False):
    out = []
    for q in range(len(scores)):
        ok, margin = [], []
        for j in range(scores.shape[1]):
            if rows[q, j] < 0:
                continue
            if np.isnan(thresholds[q, j]):  # uncalibrated pair
                if accept_uncalibrated:
                    ok.append(j)
                    margin.append(scores[q, j])
            elif scores[q, j] >= thresholds[q, j]:
                ok.append(j)
                margin.append(scores[q, j] - thresholds[q, j])
        out.append(identities[q, ok[int(np.argmax(margin))]] if ok else None)
    return out


@pytest.mark.parametrize("accept_uncalibrated", [False, True])
def test_match_equals_a_naive_loop_on_random_results(accept_uncalibrated):
    rng = np.random.default_rng(0)
    nq, k = 300, 6
    scores = -np.sort(-rng.uniform(-1, 1, (nq, k)), axis=1).astype(np.float32)
    rows = np.where(rng.uniform(size=(nq, k)) < 0.1, -1, rng.integers(0, 1000, (nq, k)))
    models = rng.choice(["v1", "v2"], (nq, k)).astype(object)
    thresholds = np.where(models == "v1", 0.2, 0.5).astype(np.float32)
    thresholds[rng.uniform(size=(nq, k)) < 0.1] = np.nan  # pairs with no calibrated threshold
    identities = rng.choice([f"p{i}" for i in range(50)], (nq, k)).astype(object)
    result = SearchResult("v2", scores, rows, identities, identities, models, thresholds, accept_uncalibrated)
    expected = _naive_match(scores, thresholds, identities, rows, accept_uncalibrated)
    assert result.match() == expected
    assert result.rejected.tolist() == [m is None for m in expected]
    assert 0 < result.rejected.sum() < nq
    records = result.to_records()
    for q, rec in enumerate(records):
        assert [h["threshold"] is None for h in rec["hits"]] == np.isnan(thresholds[q][rows[q] >= 0]).tolist()
        assert rec["uncalibrated_pairs"] == sorted({f"v2->{m}" for m in models[q][(rows[q] >= 0) & np.isnan(thresholds[q])]})
        assert sum(h["match"] for h in rec["hits"]) == (rec["match"] is not None)


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
        result = search(st, query[None], k=2)
        assert result.identities[0].tolist() == ["bob", "alice"]  # bob ranks first by raw score
        assert result.match() == ["alice"] and not result.rejected[0]
        record = result.to_records()[0]
        assert record["match"] == "alice" and [h["identity"] for h in record["hits"]] == ["bob", "alice"]
        assert [(h["threshold"], h["accepted"]) for h in record["hits"]] == [(pytest.approx(0.6), False),
                                                                             (pytest.approx(0.3), True)]
        st.set_threshold("v2", "v1", 0.50)  # now neither clears its own threshold
        assert search(st, query[None], k=2).match() == [None]


def test_an_uncalibrated_pair_never_wins_by_default(tmp_path):
    """The rollback case of issue 16: v1 queries, a correct v2 row (old->new calibrated) and a
    wrong v1 row of an uncalibrated pair with a large raw score."""
    rng = np.random.default_rng(2)
    query = l2_normalize(rng.normal(size=(1, 16)))[0]
    ortho = l2_normalize(rng.normal(size=16) - (rng.normal(size=16) @ query) * query)
    ortho = l2_normalize(ortho - (ortho @ query) * query)
    at = lambda c: c * query + np.sqrt(1 - c * c) * ortho  # noqa: E731
    with Store.create(tmp_path / "g.h5", ModelInfo(version="v1", dim=16, model_id="m1")) as st:
        st.enroll(np.stack([at(0.63)]), ["wrong-v1"], ["u75e2"])
        st.add_model(ModelInfo(version="v2", dim=16, model_id="m2", compatible_with="m1"))
        st.enroll(np.stack([at(0.649)]), ["right-v2"], ["u4ef7"], model_version="v2")
        st.set_threshold("v1", "v2", 0.564)
        result = search(st, query[None], k=2)
        record = result.to_records()[0]
        assert record["match"] == "u4ef7" and record["uncalibrated_pairs"] == ["v1->v1"]
        assert [(h["identity"], h["threshold"], h["accepted"]) for h in record["hits"]] == [
            ("u4ef7", pytest.approx(0.564), True), ("u75e2", None, False)]
        # opting in restores the raw-score margin, under which the uncalibrated pair wins
        assert search(st, query[None], k=2, accept_uncalibrated=True).match() == ["u75e2"]
        st.set_threshold("v1", "v1", 0.7)  # calibrated and not cleared
        assert search(st, query[None], k=2).match() == ["u4ef7"]
