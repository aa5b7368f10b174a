"""1:1 verification metrics on genuine / impostor score arrays.

Convention everywhere: a pair is accepted when score >= threshold. Thresholds
are chosen on the impostor distribution so the observed false-accept rate never
exceeds the requested FAR, even when impostor scores tie.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from gallery.errors import BadInput

DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class OperatingPoint:
    far: float           # requested false-accept rate
    tar: float           # true-accept rate at the threshold
    threshold: float     # accept when score >= threshold
    achieved_far: float  # observed FAR at the threshold (<= far)

    def to_dict(self) -> dict:
        return asdict(self)


def _scores(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise BadInput(f"no {name} scores: the protocol produced no {name} pairs")
    if not np.all(np.isfinite(array)):
        raise BadInput(f"{name} scores contain NaN or infinity (broken embeddings?)")
    return array


def far_supported(far: float, num_impostors: int) -> bool:
    """A FAR is measurable only if it allows at least one false accept."""
    return far * num_impostors >= 1.0 - 1e-9


def threshold_at_far(impostor: np.ndarray, far: float) -> tuple[float, float]:
    """Smallest threshold whose observed FAR is <= far. Returns (threshold, achieved FAR).

    With impostors sorted descending, at most k = floor(far * n) may be accepted,
    so the threshold sits just above the (k+1)-th highest impostor score; ties at
    that score are all rejected, which keeps the observed FAR <= far.
    """
    impostor = _scores(impostor, "impostor")
    n = impostor.size
    k = int(math.floor(far * n + 1e-9))
    if k >= n:
        return float(-np.inf), 1.0
    # partition is O(n): we only need the (k+1)-th largest value
    kth = np.partition(impostor, n - 1 - k)[n - 1 - k]
    threshold = float(np.nextafter(kth, np.inf))
    achieved = float(np.count_nonzero(impostor >= threshold)) / n
    return threshold, achieved


def tar_at_far(
    genuine: np.ndarray,
    impostor: np.ndarray,
    fars: tuple[float, ...] = DEFAULT_FARS,
) -> tuple[list[OperatingPoint], list[float]]:
    """TAR at each supported FAR, plus the FARs skipped for too few impostors."""
    genuine = _scores(genuine, "genuine")
    impostor = _scores(impostor, "impostor")
    points: list[OperatingPoint] = []
    skipped: list[float] = []
    for far in fars:
        if not far_supported(far, impostor.size):
            skipped.append(float(far))
            continue
        threshold, achieved = threshold_at_far(impostor, far)
        tar = float(np.count_nonzero(genuine >= threshold)) / genuine.size
        points.append(OperatingPoint(float(far), tar, threshold, achieved))
    return points, skipped


def roc_curve(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, thresholds) at every distinct score, highest threshold first.

    Same points as sklearn.metrics.roc_curve(drop_intermediate=False), including
    the leading (0, 0) point at threshold +inf.
    """
    genuine = _scores(genuine, "genuine")
    impostor = _scores(impostor, "impostor")
    scores = np.concatenate([genuine, impostor])
    is_genuine = np.concatenate([np.ones(genuine.size, bool), np.zeros(impostor.size, bool)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_genuine = scores[order], is_genuine[order]
    # last index of each run of equal scores: all tied pairs switch together
    ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_accepts = np.cumsum(is_genuine)[ends]
    false_accepts = (ends + 1) - true_accepts
    far = np.r_[0.0, false_accepts / impostor.size]
    tar = np.r_[0.0, true_accepts / genuine.size]
    thresholds = np.r_[np.inf, scores[ends]]
    return far, tar, thresholds


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (like scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], sorted_values.size]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def auc_score(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic; a tie counts one half."""
    genuine = _scores(genuine, "genuine")
    impostor = _scores(impostor, "impostor")
    ranks = average_ranks(np.concatenate([genuine, impostor]))
    n_pos, n_neg = genuine.size, impostor.size
    rank_sum = ranks[:n_pos].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def verification_report(
    genuine: np.ndarray, impostor: np.ndarray, fars: tuple[float, ...] = DEFAULT_FARS
) -> dict:
    """Everything the compat report shows for one 1:1 comparison."""
    points, skipped = tar_at_far(genuine, impostor, fars)
    return {
        "num_genuine": int(np.size(genuine)),
        "num_impostor": int(np.size(impostor)),
        "auc": auc_score(genuine, impostor),
        "tar_at_far": [p.to_dict() for p in points],
        "skipped_far": skipped,
    }
