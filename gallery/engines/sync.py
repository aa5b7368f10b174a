"""Keep an engine's serving view equal to the store's live view, incrementally.

The view of query model Q lives in collection `<alias>__<Q>` (a later generation adds
`__g<N>`); readers use `<alias>`, which sync points at a view only once every row and
the view record (thresholds...) are in it. So after `gallery upgrade` the next sync
builds the v2 view beside the v1 one while readers keep the v1 view, then moves the
alias in one engine call; after `gallery rollback` it catches the v1 view up with what
changed meanwhile and moves the alias back.

What changed since the last sync is found per block of BLOCK rows: a block's
fingerprint covers its row count, tombstones and each row's serving model version (the
version whose vector the query model searches; it changes exactly when a backfill
re-embeds the row). The cursor (kept in the store, `Store.set_engine_cursor`) holds the
fingerprint of every block the engine has in full, and the progress through the block
being sent, rewritten after every engine batch. A block never synced is streamed; a
synced block whose fingerprint moved is reconciled: the engine's (row, version) pairs
for it are read back and only rows missing, changed or removed are sent. A sync killed
anywhere resumes from the cursor; any engine batch it repeats is an idempotent upsert
or delete by row number. When nothing changed (same content checksum and view record)
a sync sends nothing.

The sync holds the store's writer lock (it writes the cursor), so enrolments wait for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Callable

import numpy as np

from gallery.engines.base import VIEW_FORMAT, Engine, Rows, local_path, safe_name
from gallery.errors import BadInput
from gallery.store import spaces

if TYPE_CHECKING:
    from gallery.store import Store

log = logging.getLogger(__name__)

BLOCK = 16384  # rows per fingerprint; also Milvus's cap on rows one query returns
Progress = Callable[[dict], None] | None


def default_alias(store: "Store") -> str:
    return safe_name(store.path.stem)


def cursor_key(kind: str, uri: str, alias: str, query_model: str) -> str:
    """Where a store keeps the cursor of one view: engine, deployment, alias, query model."""
    return f"{kind} {local_path(uri) or uri} {alias} {query_model}"


def view_name(alias: str, query_model: str, generation: int = 1) -> str:
    base = f"{alias}__{safe_name(query_model)}"
    return base if generation == 1 else f"{base}__g{generation}"


def block_hashes(deleted: np.ndarray, models: np.ndarray) -> list[str]:
    out = []
    for lo in range(0, len(deleted), BLOCK):
        hi = min(len(deleted), lo + BLOCK)
        digest = hashlib.blake2b(f"{hi - lo}:".encode(), digest_size=8)
        digest.update(np.ascontiguousarray(deleted[lo:hi], np.uint8).tobytes())
        digest.update("\0".join(models[lo:hi].tolist()).encode())
        out.append(digest.hexdigest())
    return out


class _Sync:
    """One run: the store snapshot, the cursor, and the engine batches."""

    def __init__(self, store: "Store", engine: Engine, alias: str, batch: int, progress: Progress) -> None:
        spaces.require_one_dim(store, "gallery sync")  # one engine collection holds one dimension
        self.store, self.engine, self.alias, self.batch, self.progress = store, engine, alias, batch, progress
        self.query_model = store.active_model
        self.key = cursor_key(engine.name, engine.uri, alias, self.query_model)
        self.cursor = store.engine_cursor(self.key) or {}
        self.sent = {"upserted": 0, "deleted": 0, "batches": 0}

    def save(self) -> None:
        self.store.set_engine_cursor(self.key, self.cursor)

    def committed(self, kind: str, count: int, block: int) -> None:
        """After an engine batch: count it, record the cursor, tell the caller."""
        self.sent[kind] += count
        self.sent["batches"] += 1
        self.save()
        if self.progress is not None:
            self.progress({"kind": kind, "rows": count, "block": block, **self.sent})

    # ---- rows ----------------------------------------------------------------------
    def rows(self, rows: np.ndarray) -> Rows:
        cols = self.cols
        return Rows(rows=rows, vectors=self.store.embeddings(rows), models=cols["model"][rows],
                    item_ids=cols["id"][rows], identities=cols["identity"][rows],
                    enrolled_at=np.asarray(cols["enrolled_at"][rows], np.float64))

    def upsert(self, view: str, rows: np.ndarray, block: int, done_at: Callable[[int], dict]) -> None:
        for lo in range(0, len(rows), self.batch):
            part = rows[lo : lo + self.batch]
            self.engine.upsert(view, self.rows(part))
            self.cursor["partial"] = done_at(int(part[-1]))
            self.committed("upserted", len(part), block)

    def stream(self, view: str, b: int, start: int, hi: int, fingerprint: str) -> None:
        """A block the engine holds nothing of beyond `start`: send its live rows from there."""
        self.cursor["partial"] = {"block": b, "hash": fingerprint, "done": start}
        self.save()  # before the first batch: a block without it is known untouched
        live = np.arange(start, hi)[~self.deleted[start:hi]]
        self.upsert(view, live, b, lambda last: {"block": b, "hash": fingerprint, "done": last + 1})

    def reconcile(self, view: str, b: int, lo: int, hi: int, fingerprint: str) -> None:
        """A block the engine may hold any part of: read its (row, version) pairs back, send the difference."""
        held = self.engine.models_in(view, lo, hi)
        models, deleted = self.cols["model"], self.deleted
        gone = np.array(sorted(r for r in held if r >= hi or deleted[r]), np.int64)
        stale = np.array([r for r in range(lo, hi) if not deleted[r] and held.get(r) != models[r]], np.int64)
        mark = {"block": b, "hash": fingerprint, "reconcile": True}
        for start in range(0, len(gone), self.batch):
            part = gone[start : start + self.batch]
            self.engine.delete(view, part)
            self.cursor["partial"] = mark
            self.committed("deleted", len(part), b)
        self.upsert(view, stale, b, lambda last: mark)

    # ---- the run -------------------------------------------------------------------
    def view_record(self) -> dict:
        live = self.cols["model"][~self.deleted]
        return {"format": VIEW_FORMAT, "query_model": self.query_model,
                "thresholds": self.store.thresholds(self.query_model), "versions": sorted(set(live.tolist())),
                "dim": self.store.dim, "rows": int(live.size), "store": str(self.store.path),
                "store_created": self.created, "checksum": self.checksum}

    def open_view(self, index: str) -> tuple[str, bool, str | None]:
        """(collection to fill, whether the cursor describes it, a superseded generation to drop)."""
        generation = int(self.cursor.get("generation", 1))
        view = self.cursor.get("collection") or view_name(self.alias, self.query_model, generation)
        needed = set(self.cols["model"][~self.deleted].tolist())
        superseded = None
        if self.engine.exists(view):
            dim = self.engine.dim(view)
            if dim != self.store.dim:
                raise self.engine.fail("sync", f"collection {view!r} has dimension {dim}, the store {self.store.dim}")
            names = self.engine.vector_names(view)
            if names is None or needed <= names:
                trusted = self.cursor.get("collection") == view
                record = None if trusted else self.engine.meta(view)
                if record and record.get("store_created") != self.created:  # never overwrite another store's view
                    raise self.engine.fail("sync", f"collection {view!r} holds the view of another store "
                                           f"({record.get('store')}); sync under another --collection")
                if not trusted:
                    self.cursor = {"collection": view, "generation": generation, "blocks": []}
                return view, trusted, None
            # The view lacks a vector for a version registered after it was made: build the next generation.
            superseded, generation = view, generation + 1
            view = view_name(self.alias, self.query_model, generation)
            if self.engine.exists(view):
                self.engine.drop(view)  # an unfinished earlier try: its cursor was the old view's
        versions = sorted(set(self.store.model_versions()) | needed)
        self.engine.create_view(view, self.store.dim, versions, index)
        self.cursor = {"collection": view, "generation": generation, "blocks": [], "superseded": superseded}
        self.save()
        return view, True, superseded

    def run(self, index: str) -> dict:
        store, engine = self.store, self.engine
        self.checksum = store.content_checksum()
        fingerprint_meta = json.dumps({"query_model": self.query_model,
                                       "thresholds": store.thresholds(self.query_model)}, sort_keys=True)
        view = self.cursor.get("collection")
        before = engine.alias_target(self.alias)
        if (view and self.cursor.get("checksum") == self.checksum and self.cursor.get("meta") == fingerprint_meta
                and before == view and engine.exists(view)):
            return self.result(view, before, checked=0)  # nothing changed: nothing sent
        self.deleted = store.tombstones()
        self.cols = store.columns()
        self.created = str(store.info().get("created"))  # the store's identity in the view record
        view, trusted, superseded = self.open_view(index)
        superseded = superseded or self.cursor.get("superseded")
        hashes = block_hashes(self.deleted, self.cols["model"])
        blocks: list[str] = self.cursor.setdefault("blocks", [])
        del blocks[len(hashes):]
        partial = self.cursor.get("partial") or {}
        n = len(self.deleted)
        for b, fingerprint in enumerate(hashes):
            lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
            if b < len(blocks) and blocks[b] == fingerprint:
                continue
            resumable = partial.get("block") == b and partial.get("hash") == fingerprint and "done" in partial
            if trusted and resumable:
                self.stream(view, b, int(partial["done"]), hi, fingerprint)
            elif trusted and b >= len(blocks) and partial.get("block") != b:
                self.stream(view, b, lo, hi, fingerprint)
            else:
                self.reconcile(view, b, lo, hi, fingerprint)
            blocks[b:b + 1] = [fingerprint]
            self.cursor["partial"] = None
            self.save()
        if self.sent["batches"]:
            engine.settle(view)
        record = self.view_record()
        if engine.meta(view) != record:
            engine.set_meta(view, record)  # the view is complete: rows first, then its record
        if before != view:
            engine.point_alias(self.alias, view)
            log.info("%s alias %s -> %s (was %s)", engine.name, self.alias, view, before)
        if superseded and superseded != view and engine.exists(superseded):
            engine.drop(superseded)
        self.cursor.update(checksum=self.checksum, meta=fingerprint_meta, superseded=None)
        self.save()
        return self.result(view, before, checked=len(hashes))

    def result(self, view: str, before: str | None, checked: int) -> dict:
        return {"engine": self.engine.name, "uri": self.engine.uri, "alias": self.alias, "collection": view,
                "previous": before, "switched": before != view, "query_model": self.query_model,
                "blocks_checked": checked, **self.sent}


def sync(store: "Store", engine: Engine, collection: str | None = None, batch: int = 1000,
         index: str = "HNSW", progress: Progress = None) -> dict:
    """Bring the engine's view of the store's query model up to date and point the serving
    alias (`collection`, default the store's file name) at it. `store` must be open for
    writing (the cursor is kept in it). Returns what was sent and where the alias points."""
    store.require_writer()
    if batch < 1:
        raise BadInput(f"batch must be >= 1, got {batch}")
    alias = collection or default_alias(store)
    if safe_name(alias) != alias:
        raise BadInput(f"collection name {alias!r}: use letters, digits and '_' (starting with a letter or '_')")
    return _Sync(store, engine, alias, batch, progress).run(index)
