"""CMC / TPIR@FPIR vs brute-force loops; mAP vs sklearn average_precision_score."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from gallery.metrics.identification import (
    cmc_curve,
    cmc_ranks,
    identification_report,
    mean_identification_report,
    open_set_tpir,
    search_stats,
)
from gallery.metrics.retrieval import average_precision, mean_average_precision


def brute_rank(scores_row, gallery_labels, label):
    """Identity rank of the mate, ties counted against the probe; 0 if not enrolled."""
    best = {}
    for s, g in zip(scores_row, gallery_labels):
        best[g] = max(best.get(g, -np.inf), s)
    if label not in best:
        return 0
    return 1 + sum(1 for g, s in best.items() if g != label and s >= best[label])


def test_hand_computed_ranks_with_ties():
    scores = np.array([[0.9, 0.5, 0.9], [0.1, 0.8, 0.3], [0.2, 0.2, 0.7]])
    gallery = np.array([0, 1, 2])
    stats = cmc_ranks(scores, np.array([0, 1, 7]), gallery)
    # probe 0 ties with identity 2 -> rank 2 (ties go against the probe)
    assert stats.rank.tolist() == [2, 1, 0]
    assert stats.mated.tolist() == [True, True, False]
    assert stats.top1.tolist() == [0.9, 0.8, 0.7]
    np.testing.assert_allclose(cmc_curve(stats, 3), [0.5, 1.0, 1.0])


def test_repeated_gallery_identities_use_best_entry():
    scores = np.array([[0.1, 0.95, 0.5, 0.6]])
    stats = cmc_ranks(scores, np.array(["a"]), np.array(["a", "a", "b", "b"]))
    assert stats.rank.tolist() == [1] and stats.genuine.tolist() == [0.95]


@pytest.mark.parametrize("quantise", [False, True])
def test_search_matches_brute_force(quantise):
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(40, 8)).astype(np.float32)
    gallery_labels = rng.integers(0, 25, 40)
    probes = rng.normal(size=(150, 8)).astype(np.float32)
    probe_labels = rng.integers(0, 30, 150)  # some identities not enrolled
    if quantise:
        gallery, probes = np.round(gallery), np.round(probes)
    stats = search_stats(probes, gallery, probe_labels, gallery_labels, chunk=17)
    scores = probes @ gallery.T
    expected = [brute_rank(scores[i], gallery_labels, probe_labels[i]) for i in range(150)]
    assert stats.rank.tolist() == expected
    ranks = np.array(expected)
    mated = ranks > 0
    cmc = cmc_curve(stats, 10)
    for k in range(1, 11):
        assert cmc[k - 1] == pytest.approx(np.mean(ranks[mated] <= k))
    report = identification_report(stats)
    assert report["rank1"] == pytest.approx(np.mean(ranks[mated] == 1))
    assert report["num_nonmated"] == int((~mated).sum())


def test_open_set_tpir_brute_force():
    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(30, 6))
    gallery_labels = np.arange(30)
    probe_labels = np.r_[rng.integers(0, 30, 300), np.arange(100, 400)]
    probes = rng.normal(size=(600, 6))
    probes[:300] += 2.0 * gallery[probe_labels[:300]]
    stats = search_stats(probes, gallery, probe_labels, gallery_labels)
    points, skipped = open_set_tpir(stats, fpirs=(1e-3, 1e-2, 1e-1))
    assert skipped == [1e-3]
    scores = probes @ gallery.T
    nonmated_top = scores[300:].max(axis=1)
    for point in points:
        # brute force: best TPIR over every threshold keeping FPIR <= fpir
        best = 0.0
        for t in np.r_[np.unique(scores), np.inf]:
            if np.mean(nonmated_top >= t) <= point["fpir"]:
                hit = [scores[i].argmax() == probe_labels[i] and scores[i, probe_labels[i]] >= t
                       for i in range(300)]
                best = max(best, np.mean(hit))
        assert point["tpir"] == pytest.approx(best)


def test_mean_over_galleries_hand_computed():
    """Two galleries: a 3-identity one (CMC stops at rank 3) and a 5-identity one; FPIR 0.1
    measured in only one of them is listed as skipped, not averaged."""
    small = {"rank1": 0.5, "rank5": 1.0, "rank10": 1.0, "cmc": [0.5, 0.75, 1.0], "skipped_fpir": [0.01, 0.1],
             "tpir_at_fpir": [{"fpir": 0.5, "tpir": 0.2, "threshold": 0.3, "achieved_fpir": 0.5}]}
    large = {"rank1": 0.25, "rank5": 1.0, "rank10": 1.0, "cmc": [0.25, 0.5, 0.5, 0.75, 1.0], "skipped_fpir": [0.01],
             "tpir_at_fpir": [{"fpir": 0.1, "tpir": 0.1, "threshold": 0.9, "achieved_fpir": 0.1},
                              {"fpir": 0.5, "tpir": 0.6, "threshold": 0.4, "achieved_fpir": 0.5}]}
    mean = mean_identification_report({"G1": small, "G2": large})
    assert mean["galleries"] == ["G1", "G2"]
    assert mean["rank1"] == pytest.approx(0.375) and mean["rank5"] == 1.0
    assert mean["cmc"] == pytest.approx([0.375, 0.625, 0.75, 0.875, 1.0])
    assert mean["tpir_at_fpir"] == [{"fpir": 0.5, "tpir": pytest.approx(0.4)}]
    assert mean["skipped_fpir"] == [0.01, 0.1]


@pytest.mark.parametrize("quantise", [False, True])
def test_map_against_sklearn(quantise):
    rng = np.random.default_rng(7)
    queries = rng.normal(size=(60, 5)).astype(np.float32)
    gallery = rng.normal(size=(80, 5)).astype(np.float32)
    if quantise:
        queries, gallery = np.round(queries), np.round(gallery)
    query_labels = rng.integers(0, 12, 60)
    gallery_labels = rng.integers(0, 10, 80)
    value, count = mean_average_precision(queries, gallery, query_labels, gallery_labels, chunk=7)
    scores = queries @ gallery.T
    expected = [average_precision_score(gallery_labels == query_labels[i], scores[i])
                for i in range(60) if np.any(gallery_labels == query_labels[i])]
    assert count == len(expected)
    assert value == pytest.approx(np.mean(expected), abs=1e-6)


def test_average_precision_hand_computed():
    # ranked: rel, non, rel -> AP = (1/1 + 2/3) / 2
    assert average_precision([[0.9, 0.5, 0.1]], [[True, False, True]])[0] == pytest.approx(5 / 6)
    # all tied: precision 2/3 for both relevant items
    assert average_precision([[0.5, 0.5, 0.5]], [[True, False, True]])[0] == pytest.approx(2 / 3)


@pytest.mark.parametrize("quantise", [False, True])
def test_map_sort_path_equals_counting_path(monkeypatch, quantise):
    import gallery.metrics.retrieval as retrieval

    rng = np.random.default_rng(11)
    queries, gallery = rng.normal(size=(50, 4)), rng.normal(size=(70, 4))
    if quantise:
        queries, gallery = np.round(queries), np.round(gallery)
    query_labels, gallery_labels = rng.integers(0, 6, 50), rng.integers(0, 6, 70)
    fast = mean_average_precision(queries, gallery, query_labels, gallery_labels)
    monkeypatch.setattr(retrieval, "FAST_MAX_RELEVANT", 0)
    slow = mean_average_precision(queries, gallery, query_labels, gallery_labels)
    assert fast[1] == slow[1] and fast[0] == pytest.approx(slow[0], abs=1e-9)
