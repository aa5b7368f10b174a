"""Deterministic evaluation protocols built from per-item identity labels.

1:1 verification: every genuine pair (same identity) plus a seeded sample of
impostor pairs. 1:N identification: a seeded set of distractor identities is
never enrolled (their images are non-mated probes, for open-set); every other
identity enrols `gallery_per_identity` seeded images and probes with the rest.
The same seed and labels always give the same pairs and split on any machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from gallery.errors import BadInput


@dataclass(frozen=True)
class ProtocolConfig:
    seed: int = 0
    impostor_pairs: int = 100_000      # sampled without replacement; all if fewer exist
    distractor_fraction: float = 0.2   # share of identities left out of the gallery
    gallery_per_identity: int = 1      # enrolled images per identity

    def __post_init__(self) -> None:
        if self.impostor_pairs < 1:
            raise BadInput(f"impostor pairs must be >= 1, got {self.impostor_pairs}")
        if not 0.0 <= self.distractor_fraction < 1.0:
            raise BadInput(f"distractor fraction must be in [0, 1), got {self.distractor_fraction}")
        if self.gallery_per_identity < 1:
            raise BadInput(f"gallery images per identity must be >= 1, got {self.gallery_per_identity}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairProtocol:
    """1:1 pairs over evaluation units: left[k] vs right[k], genuine when issame[k]."""

    left: np.ndarray
    right: np.ndarray
    issame: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.left) == len(self.right) == len(self.issame)):
            raise BadInput("pair lists differ in length")
        if not self.issame.any():
            raise BadInput("the evaluation set has no genuine pairs (each identity needs 2+ images)")
        if self.issame.all():
            raise BadInput("the evaluation set has no impostor pairs (only one identity?)")

    def describe(self) -> dict:
        return {"num_genuine": int(self.issame.sum()), "num_impostor": int((~self.issame).sum())}


@dataclass
class SearchProtocol:
    """1:N split over evaluation units.

    `galleries` names sub-galleries searched separately (IJB-C G1 and G2): name -> positions
    in `gallery`. Every probe searches each of them; a probe whose identity is not enrolled
    in that sub-gallery is a non-mated search there. Empty: one gallery."""

    gallery: np.ndarray         # unit indices enrolled
    gallery_labels: np.ndarray
    probes: np.ndarray          # unit indices searched (mated and non-mated)
    probe_labels: np.ndarray
    galleries: dict[str, np.ndarray] = field(default_factory=dict)

    def part(self, name: str) -> "SearchProtocol":
        """The same probes against sub-gallery `name` alone."""
        rows = self.galleries[name]
        return SearchProtocol(self.gallery[rows], self.gallery_labels[rows], self.probes, self.probe_labels)

    def describe(self) -> dict:
        mated = np.isin(self.probe_labels, self.gallery_labels)
        out = {
            "gallery_size": int(len(self.gallery)),
            "gallery_identities": int(len(np.unique(self.gallery_labels))),
            "num_mated_probes": int(mated.sum()),
            "num_nonmated_probes": int((~mated).sum()),
        }
        if self.galleries:
            out["galleries"] = {name: self.part(name).describe() for name in self.galleries}
        return out


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Identity codes 0..K-1 for the labels; fewer than two identities is bad input."""
    labels = np.asarray(labels).ravel()
    classes, codes = np.unique(labels, return_inverse=True)
    if classes.size < 2:
        raise BadInput(
            f"the evaluation set has {classes.size} identity; compatibility needs at least 2 "
            "(impostor pairs and non-mated searches)"
        )
    return codes


def genuine_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j), i < j, with the same identity, in index order."""
    order = np.argsort(codes, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
    sizes = np.diff(np.r_[starts, codes.size])
    lefts, rights = [], []
    # identities of equal size share one triu pattern: one vectorised step per distinct size
    for size in np.unique(sizes[sizes >= 2]):
        members = order[starts[sizes == size][:, None] + np.arange(size)[None, :]]
        a, b = np.triu_indices(size, k=1)
        lefts.append(members[:, a].ravel())
        rights.append(members[:, b].ravel())
    if not lefts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    left, right = np.concatenate(lefts), np.concatenate(rights)
    first, second = np.minimum(left, right), np.maximum(left, right)
    key = np.lexsort((second, first))
    return first[key], second[key]


def impostor_pairs(codes: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct (i < j) pairs of different identities, seeded; all of them if fewer exist."""
    n = codes.size
    sizes = np.bincount(codes)
    total = (n * (n - 1) - int((sizes * (sizes - 1)).sum())) // 2
    if count >= total:
        i, j = np.triu_indices(n, k=1)
        keep = codes[i] != codes[j]
        return i[keep].astype(np.int64), j[keep].astype(np.int64)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(0, np.int64)
    while chosen.size < count:
        draw = max(1024, int(1.3 * (count - chosen.size)))
        i = rng.integers(0, n, draw)
        j = rng.integers(0, n, draw)
        ok = codes[i] != codes[j]
        keys = np.minimum(i, j)[ok] * n + np.maximum(i, j)[ok]
        merged = np.concatenate([chosen, keys])
        # keep first occurrences in draw order so the result depends only on the seed
        _, first = np.unique(merged, return_index=True)
        chosen = merged[np.sort(first)]
    chosen = np.sort(chosen[:count])
    return chosen // n, chosen % n


def verification_protocol(labels: np.ndarray, config: ProtocolConfig) -> PairProtocol:
    codes = check_labels(labels)
    g_left, g_right = genuine_pairs(codes)
    i_left, i_right = impostor_pairs(codes, config.impostor_pairs, config.seed)
    return PairProtocol(
        left=np.r_[g_left, i_left],
        right=np.r_[g_right, i_right],
        issame=np.r_[np.ones(g_left.size, bool), np.zeros(i_left.size, bool)],
    )


def search_protocol(labels: np.ndarray, config: ProtocolConfig) -> SearchProtocol:
    codes = check_labels(labels)
    num_ids = int(codes.max()) + 1
    rng = np.random.default_rng(config.seed + 1)  # independent of the impostor stream
    num_distractors = int(round(config.distractor_fraction * num_ids))
    if config.distractor_fraction > 0:
        num_distractors = min(max(num_distractors, 1), num_ids - 1)
    distractor = np.zeros(num_ids, bool)
    distractor[rng.permutation(num_ids)[:num_distractors]] = True
    order = np.argsort(codes, kind="mergesort")
    bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=num_ids))]
    gallery, probes = [], []
    for identity in range(num_ids):
        members = order[bounds[identity] : bounds[identity + 1]]
        if distractor[identity]:
            probes.append(members)
            continue
        members = members[rng.permutation(members.size)]
        gallery.append(np.sort(members[: config.gallery_per_identity]))
        probes.append(np.sort(members[config.gallery_per_identity :]))
    gallery_idx = np.concatenate(gallery)
    probe_idx = np.concatenate(probes)
    protocol = SearchProtocol(gallery_idx, codes[gallery_idx], probe_idx, codes[probe_idx])
    if protocol.describe()["num_mated_probes"] == 0:
        raise BadInput(
            "1:N split has no mated probes: enrolled identities need more than "
            f"{config.gallery_per_identity} image(s) each"
        )
    return protocol


def pairs_from_search(search: SearchProtocol, config: ProtocolConfig) -> PairProtocol:
    """1:1 pairs from a fixed 1:N split (probe vs gallery entry), for threshold calibration
    when a set defines no pairs: every mated pair plus a seeded sample of impostor pairs."""
    probe_labels, gallery_labels = search.probe_labels, search.gallery_labels
    p_idx, g_idx = np.nonzero(probe_labels[:, None] == gallery_labels[None, :])
    num_impostor = len(search.probes) * len(search.gallery) - p_idx.size
    rng = np.random.default_rng(config.seed + 2)
    draw = min(num_impostor, config.impostor_pairs)
    picks = np.zeros(0, np.int64)
    total = len(search.probes) * len(search.gallery)
    while picks.size < draw:
        cand = rng.integers(0, total, max(1024, 2 * (draw - picks.size)))
        cand = cand[probe_labels[cand // len(search.gallery)] != gallery_labels[cand % len(search.gallery)]]
        merged = np.concatenate([picks, cand])
        _, first = np.unique(merged, return_index=True)
        picks = merged[np.sort(first)]
    picks = np.sort(picks[:draw])
    i_p, i_g = picks // len(search.gallery), picks % len(search.gallery)
    return PairProtocol(
        left=np.r_[search.probes[p_idx], search.probes[i_p]],
        right=np.r_[search.gallery[g_idx], search.gallery[i_g]],
        issame=np.r_[np.ones(p_idx.size, bool), np.zeros(i_p.size, bool)],
    )
