"""Exact k-NN on a GPU (torch CUDA): chunked matmul + two-level top-k.

torch is imported when a function runs (_torch), so `import gallery` stays torch-free.
The gallery lives on the device as one (N, dim) tensor (float16 by default: 10M x 512
is 10 GB); queries are processed in batches and the gallery in blocks, so the score
matrix never exceeds query_batch x block_rows.

Why the two-level top-k: at dim 512 a score costs 1024 FLOP on tensor cores, but
torch.topk over a long row makes several passes over it, and those passes, not the
matmul, dominate. Instead each block's scores are grouped in runs of G columns; one
bandwidth-bound pass takes every group's max, topk runs on the G-times smaller
matrix of maxima, and the exact answer is found inside the k best groups (each of
the k best scores lies in a group whose max is at least that score, so in one of
the k groups with the largest maxima).

float16 mode picks candidates from float16 scores (error <= ~1e-3) and re-scores
the best `k + rerank` of them in float32, so the order and scores returned are those
of float32 arithmetic over the stored vectors; "float32" mode is exact throughout.
On a CPU (tests, machines without CUDA) the same code runs with torch's CPU kernels.

With select="fused" (CUDA + Triton), float16 search skips the score matrix altogether:
gallery.gpu_kernels computes each group's maximum inside the matrix-product kernel, one
topk over those maxima picks the k + rerank best groups, and only their rows are
scored again (float16, then float32 for the final k + rerank as above). Same groups,
same candidates, same answer. It is meant to remove most of the selection cost at
10M x 512 (BENCHMARKS.md, GPU), but has only run under Triton's CPU interpreter so far,
so "auto" still means torch ops.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from gallery import gpu_kernels
from gallery import search as search_mod
from gallery.errors import BadInput
from gallery.limits import check_k
from gallery.store import spaces

if TYPE_CHECKING:
    from gallery.search import SearchResult
    from gallery.store import Store

log = logging.getLogger(__name__)

GROUP = 64  # columns per group in the two-level top-k


def _torch() -> Any:
    """torch, imported when a function here runs: it is optional (the [train] extra, or a
    CUDA build), and `import gallery` must work without it."""
    import torch  # optional dependency

    return torch


def available() -> bool:
    """True when torch is installed and sees a CUDA device."""
    try:
        torch = _torch()
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def two_level_topk(scores: Any, k: int, group: int = GROUP) -> tuple[Any, Any]:
    """Exact top-k along dim 1 of a (b, c) tensor; (values, column indices), best first."""
    torch = _torch()
    b, c = scores.shape
    k = min(k, c)
    if c % group or c < 4 * group * k:  # small or ragged: the direct call is cheap enough
        return torch.topk(scores, k, dim=1)
    maxima = scores.view(b, c // group, group).amax(dim=2)
    _, best_groups = torch.topk(maxima, k, dim=1)
    cols = (best_groups.unsqueeze(2) * group + torch.arange(group, device=scores.device)).view(b, k * group)
    values, pick = torch.topk(scores.gather(1, cols), k, dim=1)
    return values, cols.gather(1, pick)


class TorchFlatIndex:
    """Brute-force inner-product index on a torch device; ids are store row numbers."""

    SELECTS = ("auto", "fused", "torch")

    def __init__(self, dim: int, device: str | None = None, dtype: str = "float16",
                 block_rows: int = 1 << 20, query_batch: int = 4096, rerank: int = 16,
                 select: str = "auto") -> None:
        torch = _torch()
        if dtype not in ("float16", "float32"):
            raise BadInput(f"dtype must be float16 or float32, not {dtype!r}")
        if select not in self.SELECTS:
            raise BadInput(f"select must be one of {', '.join(self.SELECTS)}, not {select!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = getattr(torch, dtype)
        self.dim = int(dim)
        # Whole groups per block, so only the last block is ragged.
        self.block_rows = max(GROUP, block_rows // GROUP * GROUP)
        self.query_batch, self.rerank = int(query_batch), int(rerank)
        if select == "fused" and not (self.dtype == torch.float16 and gpu_kernels.available(self.device)):
            raise BadInput("select='fused' needs float16 rows on a CUDA device with Triton")
        # "auto" stays on torch ops until the fused kernel has been timed on a GPU
        # (BENCHMARKS.md, GPU: written after the one device run of its session)
        self.fused = select == "fused"
        self._x = torch.empty((0, self.dim), dtype=self.dtype, device=self.device)
        self._ids = torch.empty(0, dtype=torch.int64, device=self.device)

    @property
    def ntotal(self) -> int:
        return int(self._x.shape[0])

    def add(self, vectors: np.ndarray, row_ids: np.ndarray | None = None) -> None:
        """Append unit vectors (host arrays; call per chunk for big galleries)."""
        torch = _torch()
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise BadInput(f"vectors have shape {vectors.shape}, index dimension is {self.dim}")
        ids = np.arange(self.ntotal, self.ntotal + len(vectors)) if row_ids is None else np.asarray(row_ids)
        if len(ids) != len(vectors):
            raise BadInput(f"{len(vectors)} vectors but {len(ids)} row ids")
        x = torch.from_numpy(np.ascontiguousarray(vectors)).to(self.device, self.dtype)
        self._x = torch.cat([self._x, x])
        self._ids = torch.cat([self._ids, torch.from_numpy(ids.astype(np.int64)).to(self.device)])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, dim) unit queries -> float32 scores and row ids (nq, k), best first; -inf/-1 pad."""
        torch = _torch()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise BadInput(f"queries have shape {q.shape}, index dimension is {self.dim}")
        k = check_k(k)
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        kk = min(k, self.ntotal)
        if kk == 0 or len(q) == 0:
            return scores, rows
        with torch.no_grad():
            for lo in range(0, len(q), self.query_batch):
                qb = torch.from_numpy(q[lo : lo + self.query_batch]).to(self.device)
                s, r = self._search_batch(qb, kk)
                scores[lo : lo + len(qb), :kk] = s.cpu().numpy()
                rows[lo : lo + len(qb), :kk] = r.cpu().numpy()
        return scores, rows

    def _search_batch(self, q32: Any, k: int) -> tuple[Any, Any]:
        torch = _torch()
        q = q32.to(self.dtype)
        cand = min(self.ntotal, k + (self.rerank if self.dtype == torch.float16 else 0))
        if self.fused:
            best_p = self._candidates_fused(q, cand)
        else:
            best_s, best_p = self._candidates_blocks(q, cand)
        if self.dtype != torch.float32:  # re-score the candidates in float32
            exact = torch.einsum("bd,bkd->bk", q32, self._x[best_p].float())
            best_s, pick = torch.topk(exact, k, dim=1)
            best_p = best_p.gather(1, pick)
        return best_s.float(), self._ids[best_p[:, :k]]

    def _candidates_blocks(self, q: Any, cand: int) -> tuple[Any, Any]:
        """Best `cand` (scores, rows) per query from block-wise products and two-level top-k."""
        torch = _torch()
        best_s = best_p = None
        for lo in range(0, self.ntotal, self.block_rows):
            block = self._x[lo : lo + self.block_rows]
            s, p = two_level_topk(q @ block.T, cand)
            p = p + lo
            if best_s is not None:  # merge with the running best
                s, pick = torch.topk(torch.cat([best_s, s], 1), cand, dim=1)
                p = torch.cat([best_p, p], 1).gather(1, pick)
            best_s, best_p = s, p
        return best_s, best_p

    def _candidates_fused(self, q: Any, cand: int) -> Any:
        """Best `cand` rows per query: fused group maxima, then the best groups' rows only."""
        torch = _torch()
        group = gpu_kernels.GROUP
        maxima = gpu_kernels.group_maxima(q, self._x)
        _, groups = torch.topk(maxima, min(cand, maxima.shape[1]), dim=1)
        del maxima
        rows = (groups.unsqueeze(2) * group + torch.arange(group, device=q.device)).flatten(1)
        valid = rows < self.ntotal  # the last group may be partial
        rows = rows.masked_fill(~valid, 0)
        best_p = torch.empty((len(q), cand), dtype=torch.int64, device=q.device)
        chunk = max(1, (1 << 30) // (rows.shape[1] * self.dim * 2))  # ~1 GiB of gathered rows
        for lo in range(0, len(q), chunk):
            r = rows[lo : lo + chunk]
            s = torch.bmm(self._x[r], q[lo : lo + chunk].unsqueeze(2)).squeeze(2)
            s = s.masked_fill(~valid[lo : lo + chunk], float("-inf"))
            best_p[lo : lo + chunk] = r.gather(1, torch.topk(s, cand, dim=1).indices)
        return best_p


def from_store(store: "Store", device: str | None = None, dtype: str = "float16",
               chunk: int = 1 << 18, **kwargs: Any) -> TorchFlatIndex:
    """Upload a store's live rows to the device, reading `chunk` rows at a time."""
    spaces.require_one_dim(store, "the GPU search")
    live = np.flatnonzero(~store.tombstones())
    index = TorchFlatIndex(store.dim, device=device, dtype=dtype, **kwargs)
    for lo in range(0, live.size, chunk):
        rows = live[lo : lo + chunk]
        index.add(store.embeddings(rows), rows)
    log.info("uploaded %d rows of %s to %s (%s)", live.size, store.path, index.device, dtype)
    return index


def search_store(store: "Store", queries: np.ndarray, k: int = 10, threshold: float | None = None,
                 query_version: str | None = None, index: TorchFlatIndex | None = None,
                 **kwargs: Any) -> "SearchResult":
    """gallery.search.search, but exact on the GPU: same SearchResult, same thresholds."""
    k = check_k(k)
    version = store.resolve_version(query_version or store.active_model)
    q = search_mod.prepare_queries(queries, store.dim)
    index = index or from_store(store, **kwargs)
    scores, rows = index.search(q, k)
    return search_mod.assemble(store, version, scores, rows, threshold)
