"""Batched k-NN search over a store, with open-set rejection.

Results are arrays (nq x k), filled with numpy fancy indexing rather than Python
objects per hit, so the search API costs little over the raw faiss call (see
bench/search.py). Each hit carries the model version that embedded it, which is
what makes a mixed-version gallery (v1 rows + v2 rows) searchable and auditable.

Thresholds: an explicit `threshold` applies to every hit; otherwise the threshold
stored for the pair (query model, the hit's gallery model) applies. A pair with no
stored threshold is *uncalibrated* (NaN in `thresholds`): its hits are listed but
never accepted, so they never win the open-set decision, unless the caller opts in
with `accept_uncalibrated` (then they are accepted at any score, margin = raw score).
Raw cosine scores of different pairs live on different scales, which is why a pair
without its own threshold cannot be compared with one that has it.

A store of several dimensions (gallery/store/spaces.py) is searched per group: the query
model's own space (the index sidecar when it is the query model, else a flat index of its
rows; rows an adapter or a backfill mapped into that space included), and, for a model
with an old-space output, the older rows through `old_space_queries`. Each group gives
its k best; they are merged by the calibrated decision rule: the margin of each hit over
its own pair's threshold (the raw score for an uncalibrated pair), best first. Rows no
group covers are counted in `SearchResult.not_compared`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gallery import limits, validate
from gallery.errors import BadInput
from gallery.index import group_index, store_index
from gallery.preprocess import l2_normalize
from gallery.store import Store, spaces


@dataclass
class SearchResult:
    query_model: str
    scores: np.ndarray      # (nq, k) float32 cosine similarity, -inf where no hit
    rows: np.ndarray        # (nq, k) int64 store row numbers, -1 where no hit
    ids: np.ndarray         # (nq, k) object: item ids ("" where no hit)
    identities: np.ndarray  # (nq, k) object
    models: np.ndarray      # (nq, k) object: version that embedded each hit
    thresholds: np.ndarray  # (nq, k) threshold applied to each hit (NaN = uncalibrated pair)
    accept_uncalibrated: bool = False
    names: list[str] | None = None  # what each query was (image path, id); row numbers if None
    errors: list[dict] = field(default_factory=list)  # {"item", "error"}: query images left out
    not_compared: dict[str, int] = field(default_factory=dict)  # row model -> live rows not searched

    @property
    def calibrated(self) -> np.ndarray:
        """(nq, k) bool: a real hit whose (query model, row model) pair has a threshold."""
        return (self.rows >= 0) & np.isfinite(self.thresholds)

    @property
    def accepted(self) -> np.ndarray:
        """(nq, k) bool: a real hit at or above its pair's threshold; an uncalibrated
        pair's hit only with accept_uncalibrated."""
        with np.errstate(invalid="ignore"):
            ok = self.calibrated & (self.scores >= self.thresholds)
        if self.accept_uncalibrated:
            ok |= (self.rows >= 0) & ~np.isfinite(self.thresholds)
        return ok

    @property
    def best(self) -> np.ndarray:
        """(nq,) column of each query's match: the accepted hit with the largest margin
        over its own threshold, -1 when none. In a mixed-version gallery the v2->v2 and
        v2->v1 scores live on different scales, each calibrated by its pair's threshold,
        so a lower-ranked v1 hit that clears its threshold beats a top v2 hit that fails
        its own. With one threshold for every hit this is the first accepted hit."""
        if not self.rows.shape[1]:
            return np.full(len(self.rows), -1)
        ok = self.accepted
        margin = np.where(ok, self.scores - np.where(np.isfinite(self.thresholds), self.thresholds, 0), -np.inf)
        return np.where(ok.any(axis=1), np.argmax(margin, axis=1), -1)

    @property
    def rejected(self) -> np.ndarray:
        """(nq,) bool: open-set rejection, no hit accepted (or no hit)."""
        return self.best < 0

    def match(self) -> list[str | None]:
        """The identity of each query's match (see `best`), None when rejected."""
        return [None if b < 0 else str(self.identities[q, b]) for q, b in enumerate(self.best)]

    def uncalibrated_pairs(self, q: int) -> list[str]:
        """`query->row` model pairs among query q's hits that have no threshold."""
        missing = (self.rows[q] >= 0) & ~np.isfinite(self.thresholds[q])
        return sorted({f"{self.query_model}->{m}" for m in self.models[q][missing]})

    def to_records(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """JSON-ready: one record per query with every hit (best score first), each with
        the threshold used (None = uncalibrated pair) and whether it was accepted; then one
        record with its `error` per query image left out."""
        names = names or self.names
        out = []
        ok, matches, best = self.accepted, self.match(), self.best
        for q in range(len(self.rows)):
            hits = []
            for j in np.flatnonzero(self.rows[q] >= 0):
                limit = float(self.thresholds[q, j])
                hits.append({"item_id": str(self.ids[q, j]), "identity": str(self.identities[q, j]),
                             "score": float(self.scores[q, j]), "model_version": str(self.models[q, j]),
                             "row": int(self.rows[q, j]),
                             "threshold": limit if np.isfinite(limit) else None,
                             "accepted": bool(ok[q, j]), "match": bool(j == best[q])})
            record = {"query": names[q] if names else q, "query_model": self.query_model,
                      "rejected": bool(best[q] < 0),
                      "match": matches[q],
                      "uncalibrated_pairs": self.uncalibrated_pairs(q),
                      "hits": hits}
            out.append(record)
        return out + [{"query": e["item"], "error": e["error"], "rejected": True, "match": None,
                       "uncalibrated_pairs": [], "hits": []} for e in self.errors]


def prepare_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries)
    validate.real_dtype(q, "queries")
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise BadInput(f"queries have dimension {q.shape[-1] if q.ndim else '?'}, store has {dim}")
    return l2_normalize(validate.vectors(q, "queries"))


def search(
    store: "Store",
    queries: np.ndarray,
    k: int = 10,
    threshold: float | None = None,
    query_version: str | None = None,
    kind: str | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    rerank: int | None = None,
    accept_uncalibrated: bool = False,
    old_space_queries: np.ndarray | None = None,
) -> SearchResult:
    """k nearest live rows for each query embedding (raw or normalised).

    rerank=F fetches F*k candidates from the (approximate) index and re-scores them
    exactly against the store's own vectors: the recall of IVF's cell coverage at the
    memory of PQ codes, for a few ms of row reads per query. `old_space_queries`: the
    same queries through the query model's old-space output (a store of several
    dimensions; see the module's docstring)."""
    k = limits.check_k(k)
    if rerank is not None and rerank < 1:
        raise BadInput(f"rerank must be >= 1, got {rerank}")
    if threshold is not None and not np.isfinite(threshold):
        raise BadInput(f"threshold must be finite, got {threshold}")
    version = store.resolve_version(query_version or store.active_model)
    if isinstance(store, Store) and spaces.mixed(store):  # not a serving snapshot (gallery/serve)
        result = _search_groups(store, version, queries, old_space_queries, k, threshold, kind, nprobe,
                                ef_search, rerank)
        result.accept_uncalibrated = accept_uncalibrated
        return result
    q = prepare_queries(queries, store.dim)
    # a serving snapshot (gallery/serve) brings the index it serves; a Store's is its sidecar
    index = store_index(store, kind=kind) if isinstance(store, Store) else store.index(kind=kind)
    if nprobe is not None or ef_search is not None:
        index.set_search_params(nprobe=nprobe, ef_search=ef_search)
    # The index is asked for at most the rows the store holds; slots beyond them are padded
    # as empty (a k of 10^8 on a 10-row store must not allocate 10^8 columns per query).
    fetch = max(1, min(k * (rerank or 1), len(store.tombstones())))
    dead = int(index.meta.get("dead", 0))  # removed rows the index still holds (gallery.index)
    scores, rows = index.search(q, fetch + dead)
    if rerank:
        scores, rows = rescore_exactly(store, q, live_first(store, scores, rows, fetch)[1], k)
    result = assemble(store, version, *_pad(scores, rows, k), threshold, keep=k)
    result.accept_uncalibrated = accept_uncalibrated
    return result


def _search_groups(store: "Store", version: str, queries: np.ndarray, old_space_queries: np.ndarray | None,
                   k: int, threshold: float | None, kind: str | None, nprobe: int | None,
                   ef_search: int | None, rerank: int | None) -> SearchResult:
    """Each group's k best, merged by margin over the pair's threshold (module docstring)."""
    groups = spaces.groups(store, version)
    q = prepare_queries(queries, groups.dim)
    parts = []
    if groups.direct.size:
        if version == store.active_model:
            index = store_index(store, kind=kind)
            if nprobe is not None or ef_search is not None:
                index.set_search_params(nprobe=nprobe, ef_search=ef_search)
        else:
            index = group_index(store, ("direct", version), groups.direct,
                                lambda rows: store.embeddings(rows, version=version))
        parts.append(_group_hits(store, index, q, k, rerank, version, threshold, groups.direct_models))
    not_compared = dict(groups.not_compared)
    if groups.old_space.size:
        if old_space_queries is None:  # embedding queries without the projection: cannot compare
            models = store.values_at("model", groups.old_space)
            for name, count in zip(*np.unique(models, return_counts=True)):
                not_compared[str(name)] = not_compared.get(str(name), 0) + int(count)
        else:
            oq = prepare_queries(old_space_queries, int(groups.old_space_dim or 0))
            if len(oq) != len(q):
                raise BadInput(f"{len(q)} queries but {len(oq)} old-space queries")
            index = group_index(store, ("old_space", version), groups.old_space,
                                lambda rows: spaces.raw_vectors(store, rows))
            parts.append(_group_hits(store, index, oq, k, None, version, threshold, groups.old_space_models))
    if not parts:
        parts = [(np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))]
    result = assemble(store, version, np.concatenate([p[0] for p in parts], axis=1),
                      np.concatenate([p[1] for p in parts], axis=1), threshold)
    margin = np.where(result.rows >= 0, result.scores - np.where(np.isfinite(result.thresholds),
                                                                 result.thresholds, 0), -np.inf)
    order = np.argsort(-margin, axis=1, kind="stable")[:, :k]  # the decision rule of SearchResult.best
    for name in ("scores", "rows", "ids", "identities", "models", "thresholds"):
        setattr(result, name, np.take_along_axis(getattr(result, name), order, 1))
    result.not_compared = not_compared
    return result


def _group_hits(store: "Store", index: Any, q: np.ndarray, k: int, rerank: int | None, version: str,
                threshold: float | None, models: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """One group's k best live hits by margin over their pair's threshold, (nq, k) each, padded.

    A group can hold rows of several models (a v2's own rows and v1 rows an adapter mapped),
    each with its own threshold, so its k best by margin need not be its k best by raw
    score: more candidates are fetched until no unfetched row (raw score at most the last
    fetched one's) could beat the k-th margin found, or the whole group is fetched."""
    offsets = _thresholds(store, version, np.array(sorted(models) or [""]), threshold)
    lowest = float(np.min(np.where(np.isfinite(offsets), offsets, 0)))
    fetch = max(1, min(k * (rerank or 1), index.count))
    while True:
        scores, rows = index.search(q, fetch + int(index.meta.get("dead", 0)))
        if rerank:
            scores, rows = rescore_exactly(store, q, live_first(store, scores, rows, fetch)[1], fetch, version)
        scores, rows = live_first(store, scores, rows, fetch)
        if fetch >= index.count:
            break
        margin = _margins(store, version, scores, rows, threshold)
        kth = -np.sort(-margin, axis=1)[:, k - 1] if margin.shape[1] >= k else np.full(len(q), -np.inf)
        if (kth >= scores[:, -1] - lowest).all():
            break
        fetch = min(fetch * 4, index.count)
    margin = _margins(store, version, scores, rows, threshold)
    order = np.argsort(-margin, axis=1, kind="stable")[:, :k]
    return _pad(np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1), k)


def _margins(store: "Store", version: str, scores: np.ndarray, rows: np.ndarray,
             threshold: float | None) -> np.ndarray:
    """Each hit's score over its pair's threshold (0 for an uncalibrated pair), -inf for no hit."""
    hit = rows >= 0
    models = np.full(rows.shape, "", dtype=object)
    if hit.any():
        models[hit] = store.values_at("model", rows[hit])
    limits = _thresholds(store, version, models.astype(str), threshold)
    return np.where(hit, scores - np.where(np.isfinite(limits), limits, 0), -np.inf)


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k columns whatever the store holds: empty slots are row -1, score -inf."""
    short = k - scores.shape[1]
    if short <= 0:
        return scores, rows
    return (np.pad(scores.astype(np.float32, copy=False), ((0, 0), (0, short)), constant_values=-np.inf),
            np.pad(rows.astype(np.int64, copy=False), ((0, 0), (0, short)), constant_values=-1))


def live_first(store: "Store", scores: np.ndarray, rows: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss output with tombstoned rows and empty slots as -1 / -inf, sorted after the
    live hits; the best `keep` columns."""
    deleted = store.tombstones()
    rows = rows.astype(np.int64, copy=True)
    scores = scores.astype(np.float32, copy=True)
    # a row past the committed ones can only come from a sidecar that is not this store's
    outside = (rows < 0) | (rows >= len(deleted))
    dead = outside | deleted[np.clip(rows, 0, max(len(deleted) - 1, 0))] if len(deleted) else outside
    rows[dead] = -1
    scores[dead] = -np.inf
    if dead.any():
        order = np.argsort(-scores, axis=1, kind="stable")
        rows = np.take_along_axis(rows, order, 1)
        scores = np.take_along_axis(scores, order, 1)
    return scores[:, :keep], rows[:, :keep]


def rescore_exactly(store: "Store", q: np.ndarray, rows: np.ndarray, k: int,
                    version: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine of each query to its candidate rows (store vectors as `version`'s
    queries see them), best k kept."""
    found = rows >= 0
    uniq, inverse = np.unique(rows[found], return_inverse=True)
    vectors = store.embeddings(uniq, version=version)
    exact = np.full(rows.shape, -np.inf, np.float32)
    qi = np.nonzero(found)[0]
    exact[found] = np.einsum("nd,nd->n", q[qi], vectors[inverse])
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(exact, order, 1)
    return best, np.where(np.isfinite(best), np.take_along_axis(rows, order, 1), -1)


def assemble(store: "Store", version: str, scores: np.ndarray, rows: np.ndarray,
             threshold: float | None, keep: int | None = None) -> SearchResult:
    """Attach ids, identities and versions to faiss output (its best `keep` columns, all
    by default); drop tombstoned rows. Reads the metadata of the hit rows only
    (store.values_at), never every row's."""
    deleted = store.tombstones()
    # Tombstones in a fresh index are the masked removals (gallery.index) or a sidecar raced by one.
    scores, rows = live_first(store, scores, rows, rows.shape[1] if keep is None else keep)
    hit = rows >= 0

    def pick(name: str) -> np.ndarray:  # "" where no hit; object arrays for an empty store
        out = np.full(rows.shape, "", dtype=object)
        if hit.any():
            out[hit] = store.values_at(name, rows[hit])
        return out.astype(str) if len(deleted) else out

    models = pick("model")
    return SearchResult(
        query_model=version, scores=scores, rows=rows, ids=pick("id"),
        identities=pick("identity"), models=models,
        thresholds=_thresholds(store, version, models, threshold),
    )


def _thresholds(store: "Store", version: str, models: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is not None:
        return np.full(models.shape, float(threshold), np.float32)
    table = store.thresholds(version)
    out = np.full(models.shape, np.nan, np.float32)  # NaN: the pair is uncalibrated
    for gallery_version, value in table.items():
        out[models == gallery_version] = value
    return out
