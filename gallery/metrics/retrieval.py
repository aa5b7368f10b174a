"""Retrieval mAP: every query ranks the whole gallery; relevant = same label.

Average precision follows sklearn.metrics.average_precision_score: precision is
taken at the end of each run of tied scores (tied items are retrieved together),
AP = sum over relevant items of precision-at-their-tie-group / number relevant.
Queries with no relevant gallery item (distractors) are left out of the mean.
"""

from __future__ import annotations

import numpy as np

from gallery.errors import BadInput


def _average_precision_rows(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP per row of a (Q x G) score matrix and boolean relevance matrix."""
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    rel = np.take_along_axis(relevant, order, axis=1)
    hits = np.cumsum(rel, axis=1)
    num_cols = scores.shape[1]
    positions = np.arange(num_cols)
    # index of the last item of each item's tie group (reverse running minimum)
    is_end = np.ones_like(rel)
    is_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    end_index = np.where(is_end, positions, num_cols - 1)
    end_index = np.minimum.accumulate(end_index[:, ::-1], axis=1)[:, ::-1]
    precision_at_end = np.take_along_axis(hits, end_index, axis=1) / (end_index + 1)
    num_rel = hits[:, -1]
    return (precision_at_end * rel).sum(axis=1) / np.maximum(num_rel, 1)


def mean_average_precision(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    chunk: int = 256,
) -> tuple[float, int]:
    """(mAP, number of queries with at least one relevant item), chunked over queries."""
    queries = np.asarray(queries, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise BadInput(f"query {queries.shape} and gallery {gallery.shape} embeddings do not match")
    query_labels = np.asarray(query_labels)
    gallery_labels = np.asarray(gallery_labels)
    has_relevant = np.isin(query_labels, gallery_labels)
    queries, query_labels = queries[has_relevant], query_labels[has_relevant]
    if queries.shape[0] == 0:
        raise BadInput("mAP: no query has a relevant gallery item")
    g_order = np.argsort(gallery_labels, kind="stable")
    sorted_labels = gallery_labels[g_order]
    lo = np.searchsorted(sorted_labels, query_labels, side="left")
    hi = np.searchsorted(sorted_labels, query_labels, side="right")
    max_rel = int((hi - lo).max())
    # few relevant items per query: count ranks by comparison, O(R*G) instead of a full sort
    fast = max_rel <= FAST_MAX_RELEVANT
    if fast:
        chunk = max(1, min(chunk * 8, (1 << 24) // max(1, max_rel * gallery.shape[0])))
    total = 0.0
    for i in range(0, queries.shape[0], chunk):
        scores = queries[i : i + chunk] @ gallery.T
        if fast:
            slots = lo[i : i + chunk, None] + np.arange(max_rel)[None, :]
            valid = slots < hi[i : i + chunk, None]
            columns = g_order[np.minimum(slots, len(g_order) - 1)]
            rows = _ap_by_counting(scores, columns, valid)
        else:
            relevant = query_labels[i : i + chunk, None] == gallery_labels[None, :]
            rows = _average_precision_rows(scores, relevant)
        total += float(rows.sum())
    return total / queries.shape[0], int(queries.shape[0])


FAST_MAX_RELEVANT = 64


def _ap_by_counting(scores: np.ndarray, columns: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Same AP as _average_precision_rows without sorting rows.

    columns/valid (Q x R) name each query's relevant gallery items. For a relevant
    item with score s, the end of its tie group is at position #{all items >= s}
    and the hits there are #{relevant items >= s}.
    """
    rel_scores = np.take_along_axis(scores, columns, axis=1).astype(np.float64)
    rel_scores[~valid] = np.nan  # NaN compares false: padding never counts
    at_least = (scores[:, None, :] >= rel_scores[:, :, None]).sum(axis=2)
    hits = (rel_scores[:, None, :] >= rel_scores[:, :, None]).sum(axis=2)
    precision = np.where(valid, hits / np.maximum(at_least, 1), 0.0)
    return precision.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP per row for precomputed scores (Q x G) and relevance (Q x G bool)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    relevant = np.atleast_2d(np.asarray(relevant, dtype=bool))
    if scores.shape != relevant.shape:
        raise BadInput(f"scores {scores.shape} and relevance {relevant.shape} differ in shape")
    return _average_precision_rows(scores, relevant)
