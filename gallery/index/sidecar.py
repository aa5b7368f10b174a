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
from gallery.store.items import snapshot
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
    committed = snapshot(store)[0]
    if built_from != (store.content_checksum(), committed):
        if meta["rows"] != committed:
            return "stale", f"built from {meta['rows']} rows, the store has {committed}"
        return "stale", "rows were removed or re-embedded since it was built"
    return "fresh", "built from the current content"


def store_index(store: "Store", kind: str | None = None, rebuild: bool = False, **params: Any) -> GalleryIndex:
    """The store's index: cached or sidecar if fresh; caught up if rows were appended or a
    few removed (see _extend); else rebuilt. A different `kind` or build parameters also
    mean a rebuild."""
    checksum = store.content_checksum()
    index = None if rebuild else _candidate(store, kind, params)
    if index is not None and index.meta["checksum"] != checksum:
        index = _extend(store, index, checksum)
    if index is None:
        index = _build_for_store(store, kind, checksum, **params)
    store._cache["index"] = index
    return index


def refresh_after_write(store: "Store") -> str:
    """A writer's follow-up to an enrol or a removal: catch an existing sidecar up (rows
    added, removed rows masked), so readers find it fresh instead of each doing it on
    their own. Never rebuilds (minutes at scale: `gallery reindex`'s job). Returns the
    sidecar's state afterwards: "missing", "fresh", "corrupt", "extended" or "stale"."""
    state, _ = sidecar_state(store)
    if state != "stale":
        return state
    index = _candidate(store, None, {})
    if index is None or _extend(store, index, store.content_checksum()) is None:
        return "stale"
    return "extended"


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
    """What an older sidecar (no `chain`/`excluded` record) said it was built from: the
    first `rows` rows' batches and tombstones. Read only to catch such a sidecar up."""
    digest = hashlib.sha256(f"{rows}:{chain}:".encode())
    digest.update(np.packbits(deleted[:rows]).tobytes())
    return digest.hexdigest()


DEAD_MAX = 2048  # tombstoned rows an index may still hold; searches fetch this many extra


def _extend(store: "Store", index: GalleryIndex, checksum: str) -> GalleryIndex | None:
    """Catch a stale index up without a rebuild: add rows enrolled since, and count rows
    removed since as `dead` (still in the index, dropped by every search, which fetches
    that many extra candidates), instead of re-clustering a big gallery for a removal.

    Only when the index's rows are the same batches, there is no backfill overlay, at
    most DEAD_MAX indexed rows were removed, and the gallery at most doubled: an IVF
    quantiser trained on a much smaller gallery would leave the cells unbalanced.
    """
    meta, (committed, current_chain, deleted) = index.meta, snapshot(store)
    base = int(meta["rows"])
    chain = _chain_at(store, base)
    if "rollout" in store.h5 or base > committed or chain is None:
        return None
    if "excluded" in meta and meta.get("chain") == chain:
        excluded = int(meta["excluded"])  # rows below `base` never added: removed before
    elif "excluded" not in meta and meta.get("prefix") == prefix_digest(base, chain, deleted):
        excluded = int(deleted[:base].sum())  # an older sidecar, nothing removed since
    else:
        return None
    dead = int(deleted[:base].sum()) - excluded
    new = base + np.flatnonzero(~deleted[base:])
    if new.size > max(index.count, 1000) or dead > DEAD_MAX:
        return None
    for vectors, rows in live_blocks(store, new):
        index.faiss.add_with_ids(np.ascontiguousarray(vectors), rows)
    meta.update(count=int(index.faiss.ntotal), rows=committed, checksum=checksum, chain=current_chain,
                excluded=excluded + int(deleted[base:].sum()), dead=dead, extended_at=time.time())
    meta.pop("prefix", None)  # an older sidecar's record, superseded by chain + excluded
    log.info("caught up %s index of %s: %d rows added, %d removed rows masked", index.kind, store.path,
             new.size, dead)
    _save(store, index)
    return index


def _chain_at(store: "Store", rows: int) -> str | None:
    """The batch chain checksum after the batch ending at `rows` (None: no batch ends there)."""
    from gallery.store.items import batch_records
    from gallery.store.layout import EMPTY_CHAIN

    if rows == 0:
        return EMPTY_CHAIN
    return next((r["chain"] for r in batch_records(store) if r["stop"] == rows), None)


def _differs(current: dict, wanted: dict) -> bool:
    return any(v is not None and current.get(k) != v for k, v in wanted.items())


def _build_for_store(store: "Store", kind: str | None, checksum: str, **params: Any) -> GalleryIndex:
    committed, chain, deleted = snapshot(store)
    live = np.flatnonzero(~deleted)
    kind = kind or default_kind(live.size)
    log.info("building %s index over %d rows of %s", kind, live.size, store.path)
    clean = {k: v for k, v in params.items() if v is not None}
    index = build_over_store(store, live, IndexParams(kind=kind, **clean), checksum=checksum,
                             rows=committed, chain=chain, excluded=int(deleted.sum()), dead=0)
    _save(store, index)
    return index


def _save(store: "Store", index: GalleryIndex) -> None:
    try:
        index.save(sidecar_path(store))
    except OSError as exc:  # a read-only gallery folder still searches, just without a cache
        log.warning("could not write index sidecar for %s: %s", store.path, exc)
