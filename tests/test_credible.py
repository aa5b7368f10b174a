"""The credible mask against a naive per-class implementation, on random and real data."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from gallery.errors import BadInput
from trainer.credible import credible_mask


def naive_credible(features: np.ndarray, labels: np.ndarray, t: float) -> np.ndarray:
    """Loops only: row L2 norm, column L2 norm, per class keep ceil(T*n) nearest to mean."""
    rows = []
    for row in features.astype(np.float64):
        rows.append([v / math.sqrt(sum(x * x for x in row)) for v in row])
    n, d = len(rows), len(rows[0])
    col_norm = [math.sqrt(sum(rows[i][j] ** 2 for i in range(n))) for j in range(d)]
    # an all-zero column (e.g. a never-lit digit pixel) stays zero
    data = [[rows[i][j] / col_norm[j] if col_norm[j] > 0 else 0.0 for j in range(d)]
            for i in range(n)]
    mask = [False] * n
    for cls in sorted(set(labels.tolist())):
        members = [i for i in range(n) if labels[i] == cls]
        mean = [sum(data[i][j] for i in members) / len(members) for j in range(d)]
        dist = {i: math.sqrt(sum((data[i][j] - mean[j]) ** 2 for j in range(d))) for i in members}
        keep = math.ceil(Fraction(str(t)) * len(members))  # exact arithmetic, no float slop
        for i in sorted(members, key=lambda i: (dist[i], i))[:keep]:
            mask[i] = True
    return np.array(mask)


@pytest.mark.parametrize("t", [0.9, 0.7, 0.5, 0.3, 1.0])
def test_matches_naive_random(t: float) -> None:
    rng = np.random.default_rng(1)
    # unequal class sizes (1..12) incl. singletons, shuffled order (not grouped by label)
    sizes = [1, 2, 3, 5, 7, 10, 12, 1, 4]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    features = rng.normal(size=(len(labels), 6)) + labels[:, None] * 0.3
    expected = naive_credible(features, labels, t)
    np.testing.assert_array_equal(credible_mask(features, labels, t), expected)
    np.testing.assert_array_equal(credible_mask(features.astype(np.float32), labels, t),
                                  naive_credible(features.astype(np.float32), labels, t))


def test_counts_and_singletons() -> None:
    rng = np.random.default_rng(2)
    sizes = {0: 1, 1: 10, 2: 7, 3: 1}
    labels = np.concatenate([[c] * n for c, n in sizes.items()])
    mask = credible_mask(rng.normal(size=(len(labels), 4)), labels, 0.7)
    # 0.7*10 is 7.000000000000001 in floating point: still 7 rows, not 8
    assert [int(mask[labels == c].sum()) for c in sizes] == [1, 7, 5, 1]


def test_outlier_is_not_credible_on_real_digits() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    features, labels = digits.data[:300], digits.target[:300]
    mask = credible_mask(features, labels, 0.9)
    np.testing.assert_array_equal(mask, naive_credible(features, labels, 0.9))
    # plant a foreign image in class 0: it must be the one class-0 row marked unreliable
    poisoned = features.copy()
    first_zero = int(np.flatnonzero(labels == 0)[0])
    poisoned[first_zero] = features[np.flatnonzero(labels == 1)[0]]
    assert not credible_mask(poisoned, labels, 0.9)[first_zero]


@pytest.mark.parametrize("bad", [
    dict(t=0.0), dict(t=1.5), dict(shape=(5,)), dict(labels=3), dict(nan=True),
])
def test_bad_input(bad: dict) -> None:
    features = np.ones((6, 3)) if "shape" not in bad else np.ones(bad["shape"])
    if bad.get("nan"):
        features[0, 0] = np.nan
    labels = np.arange(bad.get("labels", 6)) % 2
    with pytest.raises(BadInput):
        credible_mask(features, labels, bad.get("t", 0.9))
