"""The STORE.index sidecar: fresh / stale / extended / rebuilt (see gallery/index/__init__.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gallery.index.core import GalleryIndex, IndexParams, default_kind
from gallery.index.streaming import build_over_store
from gallery.store.ranges import live_blocks

if TYPE_CHECKING:
    from gallery.store import Store

log = logging.getLogger(__name__)


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
    for vectors, rows in live_blocks(store, new):
        index.faiss.add_with_ids(np.ascontiguousarray(vectors), rows)
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
    index = build_over_store(store, live, IndexParams(kind=kind, **clean), checksum=checksum,
                             rows=store.committed, prefix=prefix_digest(store.committed, store.chain, deleted))
    _save(store, index)
    return index


def _save(store: "Store", index: GalleryIndex) -> None:
    try:
        index.save(sidecar_path(store))
    except OSError as exc:  # a read-only gallery folder still searches, just without a cache
        log.warning("could not write index sidecar for %s: %s", store.path, exc)
