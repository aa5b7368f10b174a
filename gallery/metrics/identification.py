"""1:N identification: closed-set CMC and open-set TPIR at FPIR.

Gallery entries may repeat an identity (several images or templates per
subject); an identity's score for a probe is then its best entry, so ranks are
counted over identities, not images. Ties are counted against the probe: a
probe is rank 1 only if no other identity scores at least as high as its own.
Scores are computed in probe chunks so 10k x 10k never materialises at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gallery.errors import BadInput
from gallery.metrics.verification import far_supported, threshold_at_far

DEFAULT_FPIRS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10)


@dataclass
class SearchStats:
    """Per-probe outcome of searching a gallery (arrays of length num_probes)."""

    mated: np.ndarray     # bool: the probe's identity is enrolled
    rank: np.ndarray      # int: 1-based identity rank of the mate (0 for non-mated)
    genuine: np.ndarray   # float: score of the mate identity (-inf for non-mated)
    top1: np.ndarray      # float: best identity score (used for open-set rejection)
    num_identities: int   # distinct gallery identities


def _encode_labels(probe_labels: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = np.concatenate([np.asarray(probe_labels).ravel(), np.asarray(gallery_labels).ravel()])
    _, codes = np.unique(both, return_inverse=True)
    n_probe = np.size(probe_labels)
    return codes[:n_probe], codes[n_probe:]


def identity_scores(scores: np.ndarray, gallery_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce (P x G) entry scores to (P x I) identity scores (max over an identity's entries)."""
    if np.all(gallery_codes[1:] >= gallery_codes[:-1]):  # search_stats pre-sorts: no column copy
        sorted_codes, ordered = gallery_codes, scores
    else:
        order = np.argsort(gallery_codes, kind="mergesort")
        sorted_codes, ordered = gallery_codes[order], scores[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_codes)) + 1]
    identities = sorted_codes[starts]
    if identities.size == gallery_codes.size:  # one entry per identity
        return ordered, identities
    return np.maximum.reduceat(ordered, starts, axis=1), identities


def cmc_ranks(scores: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> SearchStats:
    """Search statistics from a precomputed (num_probes x num_gallery) score matrix."""
    probe_codes, gallery_codes = _encode_labels(probe_labels, gallery_labels)
    return _stats_from_codes(np.asarray(scores), probe_codes, gallery_codes)


def _stats_from_codes(scores: np.ndarray, probe_codes: np.ndarray, gallery_codes: np.ndarray) -> SearchStats:
    id_scores, identities = identity_scores(scores, gallery_codes)
    column = np.searchsorted(identities, probe_codes)
    column = np.minimum(column, identities.size - 1)
    mated = identities[column] == probe_codes
    rows = np.arange(id_scores.shape[0])
    genuine = np.where(mated, id_scores[rows, column], -np.inf)
    # the mate's own column is always >= itself: subtract it from the count
    ahead = np.count_nonzero(id_scores >= genuine[:, None], axis=1) - 1
    rank = np.where(mated, ahead + 1, 0)
    return SearchStats(
        mated=mated,
        rank=rank.astype(np.int64),
        genuine=genuine.astype(np.float64),
        top1=id_scores.max(axis=1).astype(np.float64),
        num_identities=int(identities.size),
    )


def search_stats(
    probes: np.ndarray,
    gallery: np.ndarray,
    probe_labels: np.ndarray,
    gallery_labels: np.ndarray,
    chunk: int = 1024,
) -> SearchStats:
    """Cosine/inner-product search of every probe against the gallery, chunked over probes."""
    probes = np.asarray(probes, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    if probes.ndim != 2 or gallery.ndim != 2 or probes.shape[1] != gallery.shape[1]:
        raise BadInput(f"probe {probes.shape} and gallery {gallery.shape} embeddings do not match")
    if len(probes) != np.size(probe_labels) or len(gallery) != np.size(gallery_labels):
        raise BadInput("identification: labels and embeddings differ in length")
    if len(gallery) == 0 or len(probes) == 0:
        raise BadInput("identification needs at least one probe and one gallery entry")
    probe_codes, gallery_codes = _encode_labels(probe_labels, gallery_labels)
    order = np.argsort(gallery_codes, kind="mergesort")  # once, instead of per chunk
    gallery, gallery_codes = gallery[order], gallery_codes[order]
    parts = [
        _stats_from_codes(probes[i : i + chunk] @ gallery.T, probe_codes[i : i + chunk], gallery_codes)
        for i in range(0, len(probes), chunk)
    ]
    return SearchStats(
        mated=np.concatenate([p.mated for p in parts]),
        rank=np.concatenate([p.rank for p in parts]),
        genuine=np.concatenate([p.genuine for p in parts]),
        top1=np.concatenate([p.top1 for p in parts]),
        num_identities=parts[0].num_identities,
    )


def cmc_curve(stats: SearchStats, max_rank: int = 20) -> np.ndarray:
    """cmc[k-1] = fraction of mated probes whose mate is within the top k identities."""
    ranks = stats.rank[stats.mated]
    if ranks.size == 0:
        raise BadInput("no mated probes: no probe identity is enrolled in the gallery")
    max_rank = max(1, min(max_rank, stats.num_identities))
    counts = np.bincount(ranks, minlength=max_rank + 1)[1 : max_rank + 1]
    return np.cumsum(counts) / ranks.size


def open_set_tpir(stats: SearchStats, fpirs: tuple[float, ...] = DEFAULT_FPIRS) -> tuple[list[dict], list[float]]:
    """TPIR at each FPIR: non-mated probes set the threshold on their top-1 score;
    a mated probe counts when its mate is rank 1 and scores >= that threshold."""
    nonmated_top1 = stats.top1[~stats.mated]
    if nonmated_top1.size == 0:
        return [], [float(f) for f in fpirs]
    mated = stats.mated
    hits = (stats.rank[mated] == 1)
    genuine = stats.genuine[mated]
    points, skipped = [], []
    for fpir in fpirs:
        if not far_supported(fpir, nonmated_top1.size):
            skipped.append(float(fpir))
            continue
        threshold, achieved = threshold_at_far(nonmated_top1, fpir)
        tpir = float(np.count_nonzero(hits & (genuine >= threshold))) / max(1, genuine.size)
        points.append({"fpir": float(fpir), "tpir": tpir, "threshold": threshold, "achieved_fpir": achieved})
    return points, skipped


def identification_report(stats: SearchStats, ranks: tuple[int, ...] = DEFAULT_RANKS,
                          fpirs: tuple[float, ...] = DEFAULT_FPIRS) -> dict:
    """Everything the compat report shows for one 1:N comparison."""
    cmc = cmc_curve(stats, max_rank=max(20, max(ranks)))
    points, skipped = open_set_tpir(stats, fpirs)
    report = {
        "num_mated": int(stats.mated.sum()),
        "num_nonmated": int((~stats.mated).sum()),
        "gallery_identities": stats.num_identities,
        "cmc": [float(v) for v in cmc],
        "tpir_at_fpir": points,
        "skipped_fpir": skipped,
    }
    for k in ranks:
        report[f"rank{k}"] = float(cmc[min(k, cmc.size) - 1])
    return report


def mean_identification_report(reports: dict[str, dict], ranks: tuple[int, ...] = DEFAULT_RANKS) -> dict:
    """Mean over separately searched galleries (IJB-C G1, G2) of the rates of their reports:
    rank-k, CMC (a shorter curve is extended with its last value: every mate is found by
    then) and TPIR at the FPIRs measured in every gallery."""
    parts = list(reports.values())
    length = max(len(r["cmc"]) for r in parts)
    cmc = np.mean([np.r_[r["cmc"], np.full(length - len(r["cmc"]), r["cmc"][-1])] for r in parts], axis=0)
    tpirs = [{p["fpir"]: p["tpir"] for p in r["tpir_at_fpir"]} for r in parts]
    common = sorted(set.intersection(*(set(t) for t in tpirs)))
    skipped = {f for r in parts for f in r["skipped_fpir"]} | {f for t in tpirs for f in t}
    mean = {
        "galleries": list(reports),
        "cmc": [float(v) for v in cmc],
        "tpir_at_fpir": [{"fpir": f, "tpir": float(np.mean([t[f] for t in tpirs]))} for f in common],
        "skipped_fpir": sorted(skipped - set(common)),
    }
    for k in ranks:
        mean[f"rank{k}"] = float(np.mean([r[f"rank{k}"] for r in parts]))
    return mean
