"""A gallery split across several stores, searched as one with faiss IndexShards.

Scale-out without a new file format: each shard is an ordinary store (its own
writer lock, commits, verify, index sidecar), so shards can live on different disks
or machines and be enrolled in parallel; `route` decides which shard an item goes
to. ShardedGallery opens them read-only, takes each store's own index (built or
loaded as usual), rewrites its faiss ids to (shard << 40 | row) in memory, and puts
them under one faiss.IndexShards, which searches the shards in parallel threads and
merges by score. All shards must hold embeddings of the same model (same dimension
and same encoder identity), because one query embedding is compared with all of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from gallery.errors import BadInput
from gallery.index import forget, store_index
from gallery.limits import check_k
from gallery.search import prepare_queries
from gallery.store import Store, spaces

SHARD_BITS = 40  # row numbers below 2**40 per shard


def route(ids: Sequence[str], shards: int) -> np.ndarray:
    """Stable shard number per item id (sha256, so every writer agrees without a table)."""
    if shards < 1:
        raise BadInput(f"number of shards must be >= 1, got {shards}")
    return np.array([int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:8], "big") % shards
                     for i in ids], dtype=np.int64)


@dataclass
class ShardedResult:
    scores: np.ndarray      # (nq, k) cosine, -inf where no hit
    shards: np.ndarray      # (nq, k) shard number, -1 where no hit
    rows: np.ndarray        # (nq, k) row in that shard's store, -1 where no hit
    ids: np.ndarray         # (nq, k) item ids ("" where no hit)
    identities: np.ndarray
    models: np.ndarray      # version that embedded each hit


def _model_key(store: Store) -> tuple:
    info = store.model()
    return (info.dim, info.sha256 or info.model_id)


class ShardedGallery:
    """Read-only view over shard stores; use as a context manager."""

    def __init__(self, paths: Sequence[str | Path], kind: str | None = None, threaded: bool = True) -> None:
        if not paths:
            raise BadInput("no shard stores given")
        self.stores: list[Store] = []
        try:
            for path in paths:
                self.stores.append(Store.open(path))
            keys = {_model_key(s) for s in self.stores}
            if len(keys) > 1:
                raise BadInput(f"shards hold embeddings of different models {sorted(map(str, keys))}; "
                               "a query is comparable with one model's gallery only")
            for st in self.stores:
                spaces.require_one_dim(st, "a sharded search")
            self.dim = self.stores[0].dim
            self.index = faiss.IndexShards(self.dim, threaded, False)
            self._parts = [self._shard_index(n, s, kind) for n, s in enumerate(self.stores)]
            for part in self._parts:
                self.index.add_shard(part)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _shard_index(number: int, store: Store, kind: str | None):
        gi = store_index(store, kind=kind)
        if gi.meta.get("dead"):  # IndexShards merges raw faiss hits: no room to drop masked rows
            gi = store_index(store, kind=kind, rebuild=True)
        forget(store)  # ids are rewritten below: this copy is ours alone
        rows = faiss.vector_to_array(gi.faiss.id_map)
        faiss.copy_array_to_vector((np.int64(number) << SHARD_BITS) | rows, gi.faiss.id_map)
        return gi.faiss

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> ShardedResult:
        k = check_k(k)
        q = prepare_queries(queries, self.dim)
        scores, ids = self.index.search(q, int(k))
        hit = ids >= 0
        shards = np.where(hit, ids >> SHARD_BITS, -1)
        rows = np.where(hit, ids & ((1 << SHARD_BITS) - 1), -1)
        out = {name: np.full(ids.shape, "", dtype=object) for name in ("id", "identity", "model")}
        for n, store in enumerate(self.stores):
            mine = shards == n
            if mine.any():  # the hit rows' metadata only, not every row's
                for name in out:
                    out[name][mine] = store.values_at(name, rows[mine])
        scores = np.where(hit, scores, -np.inf).astype(np.float32)
        return ShardedResult(scores, shards, rows, out["id"], out["identity"], out["model"])

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def __enter__(self) -> "ShardedGallery":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
