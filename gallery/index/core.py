"""Index kinds, their parameters, a memory estimate, and building from vectors."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from gallery.errors import BadInput

log = logging.getLogger(__name__)


def faiss_module() -> Any:
    """faiss, imported on first use: 0.4 s that `gallery --help` and every command not
    touching an index would otherwise pay at start-up (the CLI imports this module for
    the index kinds)."""
    import faiss  # CLI start-up

    return faiss

KINDS = ("flat", "ivf", "ivfsq8", "hnsw", "ivfpq")
IVF_KINDS = ("ivf", "ivfsq8", "ivfpq")
FLAT_MAX = 200_000        # exact search stays fast enough up to here
IVF_MAX = 2_000_000       # IVF-Flat keeps float32 copies: 4 GiB at 2M x 512
IVFSQ8_MAX = 20_000_000   # 8-bit codes, 1 byte per dimension: 10 GiB at 20M x 512; PQ beyond
TRAIN_PER_CELL = 40       # faiss wants >= 39 training points per IVF cell
MIN_TRAIN = 50_000        # enough for PQ/SQ codebooks even with few cells
KMEANS_ITERATIONS = 10    # faiss's IVF default; more buys little on unit vectors


def default_kind(n: int) -> str:
    """Exact up to 200k rows, IVF-Flat up to 2M, IVF with 8-bit codes up to 20M, IVF-PQ beyond."""
    if n <= FLAT_MAX:
        return "flat"
    return "ivf" if n <= IVF_MAX else "ivfsq8" if n <= IVFSQ8_MAX else "ivfpq"


@dataclass
class IndexParams:
    kind: str = "flat"
    nlist: int | None = None         # IVF cells; default 4*sqrt(n)
    nprobe: int | None = None        # IVF cells visited; default nlist/4, at least 32
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
        if p.kind in IVF_KINDS:
            # ~39 training points per cell: fewer cells for small galleries.
            p.nlist = p.nlist or max(1, min(int(4 * math.sqrt(max(n, 1))), max(1, n // 39)))
            # Recall first: a missed face is a false reject; --nprobe trades it for speed.
            p.nprobe = min(p.nlist, p.nprobe or max(32, p.nlist // 4))
        if p.kind == "ivfpq":
            p.pq_m = p.pq_m or max(d for d in range(1, dim + 1) if dim % d == 0 and d <= max(1, dim // 4))
            if dim % p.pq_m:
                raise BadInput(f"pq_m={p.pq_m} must divide the dimension {dim}")
            p.pq_bits = p.pq_bits or int(min(8, max(1, math.floor(math.log2(max(n, 2) / 4)))))
        return p


def train_rows(p: IndexParams, n: int) -> int:
    """How many vectors training samples: none for flat/HNSW, ~40 per IVF cell otherwise."""
    if p.kind not in IVF_KINDS:
        return 0
    return min(n, max(TRAIN_PER_CELL * int(p.nlist or 1), MIN_TRAIN))


def estimate_bytes(p: IndexParams, n: int, dim: int) -> int:
    """Memory an index of n vectors holds (codes + ids + links), plus its training sample."""
    per_row = {"flat": 4 * dim, "ivf": 4 * dim, "ivfsq8": dim,
               "hnsw": 4 * dim + 2 * 4 * p.hnsw_m * 1.1,
               "ivfpq": (p.pq_m or 1) * (p.pq_bits or 8) / 8}[p.kind]
    ids = 8 if p.kind in ("flat", "hnsw") else 16  # IDMap ids (+ the IVF lists' own ids)
    return int(n * (per_row + ids) + train_rows(p, n) * dim * 4 + (p.nlist or 0) * dim * 4)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def check_fits(p: IndexParams, n: int, dim: int, extra: int = 0) -> None:
    """Refuse (one line, before any work) a build that cannot fit in memory."""
    need, have = estimate_bytes(p, n, dim) + extra, available_bytes()
    if have is None or need <= have:
        return
    fitting = [k for k in KINDS if estimate_bytes(IndexParams(k).resolved(n, dim), n, dim) + extra <= have]
    article = "an" if p.kind[0] in "aeiou" else "a"
    raise BadInput(f"{article} {p.kind} index over {n:,} x {dim} needs ~{_size(need)} but "
                   f"{_size(have)} of memory is available; use "
                   + (f"--index {' or '.join(fitting)}" if fitting else "a machine with more memory"))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


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
        faiss = faiss_module()
        params = self.meta["params"]
        if nprobe is not None:
            params["nprobe"] = int(nprobe)
        if ef_search is not None:
            params["ef_search"] = int(ef_search)
        inner = faiss.downcast_index(self.faiss.index) if hasattr(self.faiss, "index") else self.faiss
        if params["kind"] in IVF_KINDS:
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
        faiss = faiss_module()
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
        faiss = faiss_module()
        meta = checked_record(json.loads(Path(str(path) + ".json").read_text()))
        index = faiss.read_index(str(path))
        if index.ntotal != meta["count"]:
            raise ValueError(f"index holds {index.ntotal} vectors, its record says {meta['count']}")
        return cls(index, meta)


def checked_record(meta: Any) -> dict:
    """A sidecar record is a file next to the store, so anyone may have edited it: the
    numbers a search uses must be what they claim (ValueError -> the caller rebuilds)."""
    if not isinstance(meta, dict):
        raise ValueError("index record is not a JSON object")
    for key in ("count", "rows", "dead", "excluded"):
        value = meta.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"index record: {key} must be a non-negative integer, got {value!r}")
    if meta.get("dead", 0) > meta.get("count", 0) or not isinstance(meta.get("checksum"), str):
        raise ValueError("index record: dead exceeds count, or checksum missing")
    if not isinstance(meta.get("params", {}), dict) or not isinstance(meta.get("kind", ""), str):
        raise ValueError("index record: params must be an object and kind a string")
    return meta


def new_faiss_index(p: IndexParams, dim: int) -> Any:
    """An empty (untrained) faiss index of kind p.kind, inner product."""
    faiss = faiss_module()
    ip = faiss.METRIC_INNER_PRODUCT
    if p.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if p.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, p.hnsw_m, ip)
        inner.hnsw.efConstruction = p.ef_construction
        return inner
    quantizer = faiss.IndexFlatIP(dim)
    if p.kind == "ivf":
        inner = faiss.IndexIVFFlat(quantizer, dim, p.nlist, ip)
    elif p.kind == "ivfsq8":
        inner = faiss.IndexIVFScalarQuantizer(quantizer, dim, p.nlist, faiss.ScalarQuantizer.QT_8bit, ip)
    else:
        inner = faiss.IndexIVFPQ(quantizer, dim, p.nlist, p.pq_m, p.pq_bits, ip)
    inner.cp.niter = KMEANS_ITERATIONS
    return inner


def build_from(train: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], n: int, dim: int,
               params: IndexParams, **meta: Any) -> GalleryIndex:
    """Train on `train` (a sample), then add (vectors, store rows) chunks totalling n rows."""
    faiss = faiss_module()
    p = params.resolved(n, dim)
    inner = new_faiss_index(p, dim)
    if not inner.is_trained:
        if len(train) == 0:
            raise BadInput(f"a {p.kind} index needs vectors to train on; the gallery is empty")
        started = time.perf_counter()
        inner.train(np.ascontiguousarray(train, dtype=np.float32))
        log.info("trained %s on %d vectors in %.1f s", p.kind, len(train), time.perf_counter() - started)
    index = faiss.IndexIDMap(inner)  # the python wrapper keeps `inner` alive
    for vectors, rows in chunks:
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                           np.ascontiguousarray(rows, dtype=np.int64))
    if index.ntotal != n:
        raise ValueError(f"built an index of {index.ntotal} vectors, expected {n}")
    full_meta = {"params": asdict(p), "dim": dim, "count": n, "built_at": time.time(),
                 "train_rows": len(train), "faiss_version": faiss.__version__, **meta}
    return GalleryIndex(index, full_meta)


def build(vectors: np.ndarray, row_ids: np.ndarray, params: IndexParams, **meta: Any) -> GalleryIndex:
    """Build an index over unit vectors (in memory) whose faiss ids are `row_ids` (store rows)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    size = train_rows(params.resolved(n, dim), n)
    train = vectors[sample_positions(size, n)] if size < n else vectors  # no copy of every vector
    return build_from(train, [(vectors, row_ids)], n, dim, params, **meta)


def sample_positions(size: int, n: int, seed: int = 0) -> np.ndarray:
    """`size` of range(n), sorted; seeded so a rebuild trains on the same rows."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
