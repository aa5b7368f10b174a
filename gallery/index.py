"""faiss index over a store: inner product on L2-normalised vectors.

The index is a derived artifact, kept beside the store as STORE.index (faiss) and
STORE.index.json (what it was built from: the store's content checksum, committed
row count, live count, kind and parameters). When the store's checksum moves on
(an enrol or a removal) the index is stale and is rebuilt on the next search.
faiss ids are store row numbers, and tombstoned rows are never added.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gallery.errors import BadInput

if TYPE_CHECKING:
    from gallery.store import Store

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
FLAT_MAX = 200_000      # exact search stays fast enough up to here
IVF_MAX = 5_000_000     # beyond this, compress (ivfpq) to keep the index in memory


def default_kind(n: int) -> str:
    """Exact below 200k rows, IVF up to 5M, IVF-PQ beyond."""
    return "flat" if n <= FLAT_MAX else "ivf" if n <= IVF_MAX else "ivfpq"


@dataclass
class IndexParams:
    kind: str = "flat"
    nlist: int | None = None         # ivf/ivfpq cells; default 4*sqrt(n)
    nprobe: int | None = None        # ivf/ivfpq cells visited; default nlist/4, at least 32
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 128
    pq_m: int | None = None          # ivfpq sub-quantisers; default: a divisor of dim near dim/4
    pq_bits: int | None = None

    def resolved(self, n: int, dim: int) -> "IndexParams":
        """Fill the size-dependent defaults for n vectors of dimension dim."""
        if self.kind not in KINDS:
            raise BadInput(f"unknown index kind {self.kind!r}; valid: {', '.join(KINDS)}")
        p = IndexParams(**asdict(self))
        if p.kind in ("ivf", "ivfpq"):
            # faiss wants ~39 training points per cell; fewer cells for small galleries.
            p.nlist = p.nlist or max(1, min(int(4 * math.sqrt(max(n, 1))), max(1, n // 39)))
            # Recall first: a missed face is a false reject; --nprobe trades it for speed.
            p.nprobe = min(p.nlist, p.nprobe or max(32, p.nlist // 4))
        if p.kind == "ivfpq":
            p.pq_m = p.pq_m or max(d for d in range(1, dim + 1) if dim % d == 0 and d <= max(1, dim // 4))
            if dim % p.pq_m:
                raise BadInput(f"pq_m={p.pq_m} must divide the dimension {dim}")
            p.pq_bits = p.pq_bits or int(min(8, max(1, math.floor(math.log2(max(n, 2) / 4)))))
        return p


class GalleryIndex:
    """A faiss index whose ids are store row numbers, plus what it was built from."""

    def __init__(self, index: Any, meta: dict) -> None:
        self.faiss = index
        self.meta = meta
        self.set_search_params()

    @property
    def kind(self) -> str:
        return self.meta["params"]["kind"]

    @property
    def count(self) -> int:
        return int(self.faiss.ntotal)

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall at query time (no rebuild)."""
        import faiss

        params = self.meta["params"]
        if nprobe is not None:
            params["nprobe"] = int(nprobe)
        if ef_search is not None:
            params["ef_search"] = int(ef_search)
        inner = faiss.downcast_index(self.faiss.index) if hasattr(self.faiss, "index") else self.faiss
        if params["kind"] in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(inner).nprobe = int(params["nprobe"])
        elif params["kind"] == "hnsw":
            inner.hnsw.efSearch = int(params["ef_search"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, dim) unit vectors -> scores and row numbers, (nq, k) each; -1 pads."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.meta["dim"]:
            raise BadInput(f"queries have shape {queries.shape}, index dimension is {self.meta['dim']}")
        return self.faiss.search(queries, int(k))

    def save(self, path: Path) -> None:
        import faiss

        meta_path = Path(str(path) + ".json")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self.faiss, str(tmp))
            os.replace(tmp, path)  # atomic: readers see the old or the new index, never half
            tmp_meta.write_text(json.dumps(self.meta, indent=2, sort_keys=True))
            os.replace(tmp_meta, meta_path)
        except RuntimeError as exc:  # faiss reports I/O failures (read-only, disk full) this way
            raise OSError(str(exc).strip().splitlines()[-1]) from None
        finally:  # a failed write (disk full) leaves no temporary files behind
            for leftover in (tmp, tmp_meta):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> "GalleryIndex":
        import faiss

        meta = json.loads(Path(str(path) + ".json").read_text())
        index = faiss.read_index(str(path))
        if index.ntotal != meta["count"]:
            raise ValueError(f"index holds {index.ntotal} vectors, its record says {meta['count']}")
        return cls(index, meta)


def build(vectors: np.ndarray, row_ids: np.ndarray, params: IndexParams, **meta: Any) -> GalleryIndex:
    """Build an index over unit vectors whose faiss ids are `row_ids` (store rows)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    p = params.resolved(n, dim)
    ip = faiss.METRIC_INNER_PRODUCT
    if p.kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif p.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, p.hnsw_m, ip)
        inner.hnsw.efConstruction = p.ef_construction
    elif p.kind == "ivf":
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, p.nlist, ip)
    else:
        inner = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, p.nlist, p.pq_m, p.pq_bits, ip)
    if not inner.is_trained:
        if n == 0:
            raise BadInput(f"a {p.kind} index needs vectors to train on; the gallery is empty")
        inner.train(vectors)
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, np.ascontiguousarray(row_ids, dtype=np.int64))
    full_meta = {"params": asdict(p), "dim": dim, "count": n, "built_at": time.time(),
                 "faiss_version": faiss.__version__, **meta}
    return GalleryIndex(index, full_meta)


# ---- the store's sidecar ------------------------------------------------------------
def sidecar_path(store: "Store") -> Path:
    return Path(str(store.path) + ".index")


def sidecar_state(store: "Store") -> tuple[str, str]:
    """("missing" | "fresh" | "stale" | "corrupt", reason)."""
    path = sidecar_path(store)
    meta_path = Path(str(path) + ".json")
    if not path.exists() or not meta_path.exists():
        return "missing", "no index built yet"
    try:
        meta = json.loads(meta_path.read_text())
        built_from = (meta["checksum"], meta["rows"])
    except (ValueError, KeyError, OSError) as exc:
        return "corrupt", f"{meta_path.name}: {exc.__class__.__name__}"
    if built_from != (store.content_checksum(), store.committed):
        if meta["rows"] != store.committed:
            return "stale", f"built from {meta['rows']} rows, the store has {store.committed}"
        return "stale", "rows were removed or re-embedded since it was built"
    return "fresh", "built from the current content"


def store_index(store: "Store", kind: str | None = None, rebuild: bool = False, **params: Any) -> GalleryIndex:
    """The store's index: cached or sidecar if fresh; extended if rows were only appended;
    else rebuilt. A different `kind` or build parameters also mean a rebuild."""
    checksum = store.content_checksum()
    index = None if rebuild else _candidate(store, kind, params)
    if index is not None and index.meta["checksum"] != checksum:
        index = _extend(store, index, checksum)
    if index is None:
        index = _build_for_store(store, kind, checksum, **params)
    store._cache["index"] = index
    return index


def _candidate(store: "Store", kind: str | None, params: dict) -> GalleryIndex | None:
    """The in-memory index, else the sidecar (fresh or stale), if of the wanted kind."""
    index = store._cache.get("index")
    if index is None and sidecar_state(store)[0] in ("fresh", "stale"):
        try:
            index = GalleryIndex.load(sidecar_path(store))
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            log.warning("index sidecar of %s unreadable (%s); rebuilding", store.path, exc)
    if index is None or kind not in (None, index.kind) or _differs(index.meta["params"], params):
        return None
    return index


def prefix_digest(rows: int, chain: str, deleted: np.ndarray) -> str:
    """What an index built over the first `rows` rows depends on: their batches and tombstones."""
    digest = hashlib.sha256(f"{rows}:{chain}:".encode())
    digest.update(np.packbits(deleted[:rows]).tobytes())
    return digest.hexdigest()


def _extend(store: "Store", index: GalleryIndex, checksum: str) -> GalleryIndex | None:
    """Add rows enrolled since the index was built, when nothing else changed.

    Only when the index's rows are untouched (same batches, no new tombstones, no
    backfill overlay) and the gallery at most doubled: an IVF quantiser trained on
    a much smaller gallery would leave the cells unbalanced, so that is a rebuild.
    """
    from gallery.store.items import batch_records
    from gallery.store.layout import EMPTY_CHAIN

    meta, committed = index.meta, store.committed
    base = int(meta["rows"])
    if "prefix" not in meta or "rollout" in store.h5 or base >= committed:
        return None
    chains = {r["stop"]: r["chain"] for r in batch_records(store)}
    chains[0] = EMPTY_CHAIN
    deleted = store.columns()["deleted"]
    if base not in chains or prefix_digest(base, chains[base], deleted) != meta["prefix"]:
        return None
    new = base + np.flatnonzero(~deleted[base:])
    if new.size > max(index.count, 1000):
        return None
    index.faiss.add_with_ids(np.ascontiguousarray(store.embeddings(new)), new.astype(np.int64))
    meta.update(count=int(index.faiss.ntotal), rows=committed, checksum=checksum,
                prefix=prefix_digest(committed, store.chain, deleted), extended_at=time.time())
    log.info("extended %s index of %s by %d rows", index.kind, store.path, new.size)
    _save(store, index)
    return index


def _differs(current: dict, wanted: dict) -> bool:
    return any(v is not None and current.get(k) != v for k, v in wanted.items())


def _build_for_store(store: "Store", kind: str | None, checksum: str, **params: Any) -> GalleryIndex:
    live = np.flatnonzero(~store.columns()["deleted"])
    kind = kind or default_kind(live.size)
    log.info("building %s index over %d rows of %s", kind, live.size, store.path)
    clean = {k: v for k, v in params.items() if v is not None}
    deleted = store.columns()["deleted"]
    index = build(store.embeddings(live), live, IndexParams(kind=kind, **clean), checksum=checksum,
                  rows=store.committed, prefix=prefix_digest(store.committed, store.chain, deleted))
    _save(store, index)
    return index


def _save(store: "Store", index: GalleryIndex) -> None:
    try:
        index.save(sidecar_path(store))
    except OSError as exc:  # a read-only gallery folder still searches, just without a cache
        log.warning("could not write index sidecar for %s: %s", store.path, exc)
