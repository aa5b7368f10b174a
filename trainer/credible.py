"""MixBCT's credible mask: which old features are trustworthy enough to mix in.

DESIGN §2 step 2: L2-normalise each row of the old features, then L2-normalise each
*column* over the whole set (the authors' code does this second step; it evens out
dimensions the old model over-uses). Per class, rows are ranked by Euclidean distance
to the class mean and the ceil(T * n) nearest are credible. A singleton class is its
own mean, so it is always credible.

No torch here: the mask is built once, before training, on the full old-feature matrix.
"""

from __future__ import annotations

import math

import numpy as np

from gallery.errors import BadInput

# ceil(T * n) in floating point is fragile: 0.7 * 10 == 7.000000000000001 would make
# ceil() keep 8 rows. Subtract a tolerance far below 1/n for any realistic n.
_CEIL_TOLERANCE = 1e-9


def credible_count(threshold: float, n: int) -> int:
    """Number of credible rows kept in a class of n rows: ceil(T * n)."""
    return int(math.ceil(threshold * n - _CEIL_TOLERANCE))


def normalise_rows_then_columns(features: np.ndarray) -> np.ndarray:
    """L2 row normalisation followed by L2 column normalisation, in float64."""
    data = np.asarray(features, dtype=np.float64)
    row_norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = data / np.maximum(row_norms, 1e-12)
    col_norms = np.linalg.norm(data, axis=0, keepdims=True)
    return data / np.maximum(col_norms, 1e-12)


def credible_mask(features: np.ndarray, labels: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """Boolean mask (N,) of credible rows of old features (N x d) with labels (N,)."""
    features, labels = _validate(features, labels, threshold)
    data = normalise_rows_then_columns(features)
    mask = np.zeros(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 1
    for members in np.split(order, boundaries):
        chunk = data[members]
        distances = np.linalg.norm(chunk - chunk.mean(axis=0, keepdims=True), axis=1)
        # stable sort: equal distances keep dataset order, so the mask is deterministic
        nearest = np.argsort(distances, kind="stable")[: credible_count(threshold, len(members))]
        mask[members[nearest]] = True
    return mask


def _validate(features: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < threshold <= 1.0:
        raise BadInput(f"credible threshold T must be in (0, 1], got {threshold}")
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or features.shape[0] == 0:
        raise BadInput(f"old features must be a non-empty N x d matrix, got shape {features.shape}")
    if labels.shape != (features.shape[0],):
        raise BadInput(
            f"labels shape {labels.shape} does not match {features.shape[0]} old-feature rows"
        )
    if not np.isfinite(features).all():
        raise BadInput("old features contain NaN or infinite values")
    return features, labels.astype(np.int64, copy=False)
