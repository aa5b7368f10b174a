"""Verification metrics vs hand-computed cases (with ties), brute force and sklearn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from gallery.errors import BadInput
from gallery.metrics.verification import (
    auc_score,
    average_ranks,
    roc_curve,
    tar_at_far,
    threshold_at_far,
)


def brute_tar_at_far(genuine, impostor, far):
    """Try every candidate threshold; keep the best TAR whose FAR <= far."""
    best = 0.0
    for t in np.unique(np.r_[genuine, impostor, np.inf]):
        if np.mean(impostor >= t) <= far:
            best = max(best, np.mean(genuine >= t))
    return best


def test_hand_computed_with_ties():
    genuine = np.array([0.9, 0.8, 0.8, 0.5])
    impostor = np.array([0.8, 0.4, 0.4, 0.3, 0.3, 0.2, 0.1, 0.1, 0.0, -0.1])
    # FAR 0.1 allows one false accept: the 0.8 impostor may be accepted,
    # so all genuine >= 0.8 pass and 0.5 passes too (next impostor is 0.4).
    points, skipped = tar_at_far(genuine, impostor, fars=(0.1,))
    assert skipped == []
    assert points[0].tar == 1.0
    assert 0.4 < points[0].threshold <= 0.5 + 1e-12
    assert points[0].achieved_far == pytest.approx(0.1)
    # FAR 0.15 still one accept (floor); FAR 0.05 is below 1/10: skipped
    points, skipped = tar_at_far(genuine, impostor, fars=(0.05, 0.15))
    assert skipped == [0.05]
    # FAR 0.2 allows two, but the two 0.4s tie: accepting one accepts both,
    # so the threshold must stay above 0.4 -> same point as FAR 0.1
    threshold, achieved = threshold_at_far(impostor, 0.2)
    assert threshold > 0.4 and achieved == pytest.approx(0.1)
    threshold, achieved = threshold_at_far(impostor, 0.3)
    assert 0.3 < threshold <= 0.4 and achieved == pytest.approx(0.3)


def test_zero_far_threshold_rejects_tied_top_impostor():
    genuine = np.array([1.0, 0.7])
    impostor = np.array([0.7, 0.2])
    threshold, achieved = threshold_at_far(impostor, 0.4)  # 0.4*2 < 1 -> no accepts
    assert threshold > 0.7 and achieved == 0.0
    points, _ = tar_at_far(genuine, impostor, fars=(0.5,))
    assert points[0].tar == 1.0  # one accept allowed: 0.7 impostor accepted


def test_auc_hand_computed_with_ties():
    # pairs (g, i): 2 > 1 win, 2 = 2 tie, 1 < 2 loss, 1 = 1 tie -> (1 + .5 + 0 + .5) / 4
    assert auc_score(np.array([2.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(0.5)
    assert auc_score(np.array([3.0, 2.0]), np.array([2.0, 1.0])) == pytest.approx(0.875)


def test_average_ranks_ties():
    assert average_ranks(np.array([10.0, 20.0, 10.0, 30.0])).tolist() == [1.5, 3.0, 1.5, 4.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_random(seed):
    rng = np.random.default_rng(seed)
    genuine = rng.normal(1.0, 1.0, 500)
    impostor = rng.normal(0.0, 1.0, 3000)
    if seed == 2:  # heavy ties: quantised scores
        genuine, impostor = np.round(genuine, 1), np.round(impostor, 1)
    labels = np.r_[np.ones(genuine.size), np.zeros(impostor.size)]
    scores = np.r_[genuine, impostor]
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    far, tar, thr = roc_curve(genuine, impostor)
    np.testing.assert_allclose(far, sk_fpr)
    np.testing.assert_allclose(tar, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert auc_score(genuine, impostor) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fars = (1e-3, 1e-2, 1e-1)
    points, skipped = tar_at_far(genuine, impostor, fars)
    assert skipped == []
    for point in points:
        # TAR@FAR = best TPR on the sklearn ROC with FPR <= far
        assert point.tar == pytest.approx(sk_tpr[sk_fpr <= point.far].max())
        assert point.tar == pytest.approx(brute_tar_at_far(genuine, impostor, point.far))
        assert point.achieved_far <= point.far


def test_skips_unsupported_fars():
    rng = np.random.default_rng(0)
    points, skipped = tar_at_far(rng.normal(size=50), rng.normal(size=1000))
    assert skipped == [1e-6, 1e-5, 1e-4]
    assert [p.far for p in points] == [1e-3, 1e-2, 1e-1]
    _, skipped = tar_at_far(rng.normal(size=50), rng.normal(size=999))
    assert skipped == [1e-6, 1e-5, 1e-4, 1e-3]  # 999 impostors cannot measure 1e-3


def test_bad_scores():
    with pytest.raises(BadInput, match="impostor"):
        tar_at_far(np.ones(3), np.array([]))
    with pytest.raises(BadInput, match="NaN"):
        auc_score(np.array([np.nan]), np.ones(2))
