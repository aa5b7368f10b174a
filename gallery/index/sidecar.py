"""The index sidecar: fresh / stale / extended / rebuilt (see gallery/index/__init__.py).

Storage: STORE/sidecar.index.json, the record: what the index was built from (the store's
content checksum and committed rows, the manifest version), the faiss file it names and
that file's sha256; and the faiss file itself, STORE/sidecar-<sha256 prefix>.index (never
rewritten: a new index is a new file). Saving writes the faiss file, then replaces the
record atomically, then removes older faiss files: a crash at any point leaves the
previous record naming its intact file. Readers write sidecars too (derived data, not under
the writer lock). A faiss file that does not hash to its record (a bit flip, another index
swapped in) is damaged: rebuilt, never searched, and `verify` names it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gallery.index.core import GalleryIndex, IndexParams, checked_record, default_kind
from gallery.index.streaming import build_over_store
from gallery.store import spaces
from gallery.store.manifest import sha256_file
from gallery.store.reads import batch_records, snapshot
from gallery.store.schema import EMPTY_CHAIN
from gallery.store.ranges import live_blocks

if TYPE_CHECKING:
    from gallery.store import Store

log = logging.getLogger(__name__)


# ---- the index an open store handle searches -----------------------------------------
# Kept here, not in the store: the handle -> (the manifest version it was made for, the
# index). A commit by that handle makes it a miss, so the sidecar a writer just caught up is
# read again; an index that does not match the content checksum is extended or rebuilt anyway.
_IN_USE: "weakref.WeakKeyDictionary[Store, tuple[int, GalleryIndex]]" = weakref.WeakKeyDictionary()


def _in_use(store: "Store") -> GalleryIndex | None:
    version, index = _IN_USE.get(store, (None, None))
    return index if version == store.manifest_version else None


def forget(store: "Store") -> None:
    """Drop the index kept for this handle (a caller that changes its copy, e.g. shards' ids)."""
    _IN_USE.pop(store, None)


# ---- the store's sidecar ------------------------------------------------------------
RECORD = "sidecar.index.json"


def record_path(store: "Store") -> Path:
    return store.dir / RECORD


def sidecar_path(store: "Store") -> Path:
    """The faiss file the record names (a name that does not exist when there is none)."""
    try:
        name = json.loads(record_path(store).read_text())["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return store.dir / "sidecar.index"
    return store.dir / Path(str(name)).name


def _meta_path(store: "Store") -> Path:
    return record_path(store)


def sidecar_state(store: "Store", deep: bool = False) -> tuple[str, str]:
    """("missing" | "fresh" | "stale" | "corrupt", reason). `deep` also checks the faiss
    file against its recorded sha256 (reads it; `gallery verify`)."""
    meta_path = _meta_path(store)
    if not meta_path.exists():
        return "missing", "no index built yet"
    try:
        meta = checked_record(json.loads(meta_path.read_text()))
        built_from = (meta["checksum"], meta["rows"])
        recorded = meta["sha256"]
    except (ValueError, KeyError, OSError, TypeError) as exc:
        return "corrupt", f"{meta_path.name}: {exc.__class__.__name__}"
    path = store.dir / Path(str(meta.get("file", "sidecar.index"))).name  # from this same read of the record
    if not path.exists():
        return "missing", f"{path.name} is gone (replaced by a concurrent save, or deleted)"
    try:
        if deep and sha256_file(path) != recorded:
            return "corrupt", f"{path.name} does not match the checksum in {meta_path.name}"
    except FileNotFoundError:  # a concurrent save replaced the record and removed this file
        return "stale", "replaced by a concurrent save while being checked"
    committed, _, deleted = snapshot(store)
    live, dead = int(spaces.groups(store).direct.size), int(meta.get("dead", 0))
    if deep and built_from == (store.content_checksum(), committed) and meta.get("count") != live + dead:
        return "corrupt", f"{meta_path.name} claims {meta.get('count')} vectors for {live} live rows (+{dead} masked)"
    if built_from != (store.content_checksum(), committed):
        if meta["rows"] != committed:
            return "stale", f"built from {meta['rows']} rows, the store has {committed}"
        return "stale", "rows were removed or re-embedded since it was built"
    return "fresh", "built from the current content"


def check_sidecar(report: dict, store: "Store") -> dict:
    """Add the sidecar's state to a store's verify report (`index`): a stale sidecar is a
    warning (caught up or rebuilt on the next search), a damaged one a problem (`ok`
    False: rebuilt, never searched). Checked only after a full check found no damage."""
    state = "unchecked"
    if not report["quick"] and report["ok"]:
        state, reason = sidecar_state(store, deep=True)
        if state == "stale":
            report["warnings"].append(f"index is stale ({reason}); it is caught up or rebuilt on the next search")
        elif state == "corrupt":
            report["problems"].append(f"index sidecar damaged, run `gallery reindex` ({reason}); searches "
                                      "rebuild it, never search it")
            report["ok"] = False
    report["index"] = state
    return report


def store_index(store: "Store", kind: str | None = None, rebuild: bool = False,
                progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                **params: Any) -> GalleryIndex:
    """The store's index: cached or sidecar if fresh; caught up if rows were appended or a
    few removed (see _extend); else rebuilt. A different `kind` or build parameters also
    mean a rebuild. A rebuild calls `on_total(live rows)`, then `progress(n)` per block added."""
    checksum = store.content_checksum()
    index = None if rebuild else _candidate(store, kind, params)
    if index is not None and index.meta["checksum"] != checksum:
        index = _extend(store, index, checksum)
    if index is None:
        index = _build_for_store(store, kind, checksum, progress, on_total, **params)
    _IN_USE[store] = (store.manifest_version, index)
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
    index = _in_use(store)
    if index is None and sidecar_state(store)[0] in ("fresh", "stale"):
        try:
            index = _load(store)
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

    Only when the index's rows are the same batches, there is no backfill overlay nor a
    second dimension (the rows indexed follow the query model: rebuilt), at
    most DEAD_MAX indexed rows were removed, and the gallery at most doubled: an IVF
    quantiser trained on a much smaller gallery would leave the cells unbalanced.
    """
    meta, (committed, current_chain, deleted) = index.meta, snapshot(store)
    base = int(meta["rows"])
    chain = _chain_at(store, base)
    if store.manifest["overlays"] or base > committed or chain is None or spaces.mixed(store):
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
    if rows == 0:
        return EMPTY_CHAIN
    return next((r["chain"] for r in batch_records(store) if r["stop"] == rows), None)


def _differs(current: dict, wanted: dict) -> bool:
    return any(v is not None and current.get(k) != v for k, v in wanted.items())


def _build_for_store(store: "Store", kind: str | None, checksum: str,
                     progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                     **params: Any) -> GalleryIndex:
    committed, chain, deleted = snapshot(store)
    live = spaces.groups(store).direct  # the live rows in the query model's space (all, at one dim)
    if on_total is not None:
        on_total(int(live.size))
    kind = kind or default_kind(live.size)
    log.info("building %s index over %d rows of %s", kind, live.size, store.path)
    clean = {k: v for k, v in params.items() if v is not None}
    index = build_over_store(store, live, IndexParams(kind=kind, **clean), progress, checksum=checksum,
                             rows=committed, chain=chain, excluded=int(deleted.sum()), dead=0)
    _save(store, index)
    return index


def _load(store: "Store") -> GalleryIndex:
    """The sidecar, only if its faiss file is the one its record names (sha256)."""
    import faiss  # lazy: CLI start-up (every command imports gallery.index; few search)

    meta = checked_record(json.loads(_meta_path(store).read_text()))
    path = store.dir / Path(str(meta["file"])).name  # the file this record names, not a later one
    fd = os.open(path, os.O_RDONLY)
    try:  # hashed and read through one open file: a concurrent replace cannot slip in between
        if sha256_file(Path(f"/proc/self/fd/{fd}")) != meta.get("sha256"):
            raise ValueError(f"{path.name} does not match the checksum in its record")
        index = faiss.read_index(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if index.ntotal != meta["count"]:
        raise ValueError(f"index holds {index.ntotal} vectors, its record says {meta['count']}")
    return GalleryIndex(index, meta)


def _write_hashed(index: Any, path: Path) -> str:
    """Write a faiss index to `path` and return the sha256 of the bytes written, hashed as
    they go out (one pass; re-reading a 2 GiB file to hash it cost as much again)."""
    import faiss  # lazy: CLI start-up, as in _load

    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        def write(chunk: bytes) -> None:
            digest.update(chunk)
            handle.write(chunk)

        faiss.write_index(index, faiss.PyCallbackIOWriter(write))
    return digest.hexdigest()


def _save(store: "Store", index: GalleryIndex) -> None:
    meta_path = _meta_path(store)
    tmp = store.dir / f".sidecar.{os.getpid()}.tmp"
    tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    try:
        digest = _write_hashed(index.faiss, tmp)
        path = store.dir / f"sidecar-{digest[:16]}.index"
        index.meta.update(sha256=digest, file=path.name, manifest_version=store.manifest_version)
        os.replace(tmp, path)
        tmp_meta.write_text(json.dumps(index.meta, indent=2, sort_keys=True))
        os.replace(tmp_meta, meta_path)
        for older in store.dir.glob("sidecar-*.index"):  # a reader holding one open keeps reading it
            if older.name != path.name:
                older.unlink(missing_ok=True)
    except (OSError, RuntimeError) as exc:  # a read-only store still searches, just without a cache
        log.warning("could not write index sidecar for %s: %s", store.path, str(exc).strip().splitlines()[-1])
    finally:  # a failed write (disk full) leaves no temporary files behind
        for leftover in (tmp, tmp_meta):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass  # read-only: nothing was created either
