"""Vectorised evaluation metrics: verification (ROC, TAR@FAR, AUC, thresholds),
identification (CMC, TPIR@FPIR open-set) and retrieval (mAP).

Every function works on numpy arrays of scores; higher score = more similar.
They are checked in tests/test_metrics*.py against brute-force loops and
scikit-learn.
"""

from gallery.metrics.identification import (
    SearchStats,
    cmc_curve,
    cmc_ranks,
    open_set_tpir,
    search_stats,
)
from gallery.metrics.retrieval import mean_average_precision
from gallery.metrics.verification import (
    DEFAULT_FARS,
    auc_score,
    roc_curve,
    tar_at_far,
    threshold_at_far,
)

__all__ = [
    "DEFAULT_FARS",
    "auc_score",
    "cmc_curve",
    "cmc_ranks",
    "mean_average_precision",
    "open_set_tpir",
    "roc_curve",
    "tar_at_far",
    "threshold_at_far",
    "search_stats",
    "SearchStats",
]
