"""Backfilled rows: embeddings re-made by a newer model, kept beside the original rows.

A backfill never rewrites a committed row. It appends (row number, new embedding)
to /rollout/backfill/<version>, so
- the store's batch checksums (`gallery verify`) still hold for the original rows;
- a rollback is exact: the overlay of a model applies only while that model (or a
  model that upgraded from it) is the query model, so rolling back to v1 shows the
  v1 embeddings again, and upgrading again shows the backfilled ones;
- readers see whole batches only: rows past the committed count are ignored and are
  overwritten by the next writer (the same commit protocol as an enrol).

Per version group: datasets row (int64), embedding (n, dim), content_hash (S64), plan
(int64: the rows a backfill run will visit, fixed when it starts) and one attr
`state` = [committed rows, plan cursor, plan length, published rows] written in one
go, so the committed count and the resume point can never disagree. Readers see the
first `published` rows only: publishing every few thousand rows (not every batch) keeps
readers from rebuilding their index after each small commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h5py
import numpy as np

from gallery.rollout.state import GROUP, lineage
from gallery.store.items import stored_models

if TYPE_CHECKING:
    from gallery.store import Store

BACKFILL = "backfill"


@dataclass
class OverlayView:
    """Rows re-embedded by models in the query model's lineage (latest wins)."""

    rows: np.ndarray        # (m,) int64 store rows, unique
    versions: np.ndarray    # (m,) str: the model that re-embedded each row
    embedding: np.ndarray   # (m, dim) float32, unit length


def group(store: "Store", version: str, create: bool = False) -> h5py.Group | None:
    path = f"{GROUP}/{BACKFILL}/{version}"
    if path in store.h5:
        return store.h5[path]
    if not create:
        return None
    store.require_writer()
    g = store.h5.require_group(path)
    g.create_dataset("row", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="i8")
    rows = max(1, (1 << 20) // (4 * store.dim))
    g.create_dataset("embedding", shape=(0, store.dim), maxshape=(None, store.dim),
                     chunks=(rows, store.dim), dtype=store.dtype)
    g.create_dataset("content_hash", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="S64")
    g.create_dataset("plan", shape=(0,), maxshape=(None,), chunks=(4096,), dtype="i8")
    g.attrs["state"] = np.zeros(4, np.int64)
    store.h5.flush()
    return g


def state(g: h5py.Group) -> tuple[int, int, int]:
    """(committed rows, plan cursor, plan length)."""
    committed, cursor, plan_len, _ = (int(v) for v in g.attrs["state"])
    return committed, cursor, plan_len


def published(g: h5py.Group) -> int:
    """Rows readers see (<= committed)."""
    return int(g.attrs["state"][3])


def _set_state(store: "Store", g: h5py.Group, committed: int, cursor: int, plan_len: int,
               publish: bool = False) -> None:
    shown = committed if publish else min(published(g), committed)
    g.attrs["state"] = np.array([committed, cursor, plan_len, shown], np.int64)  # the commit point
    store.h5.flush()
    store.invalidate()


def versions(store: "Store") -> list[str]:
    path = f"{GROUP}/{BACKFILL}"
    return sorted(store.h5[path].keys()) if path in store.h5 else []


def committed_rows(store: "Store", version: str) -> np.ndarray:
    g = group(store, version)
    return np.empty(0, np.int64) if g is None else g["row"][: state(g)[0]]


def start_plan(store: "Store", version: str, rows: np.ndarray, meta: dict) -> None:
    """Fix the rows a backfill run visits (in order) so a resumed run makes the same batches."""
    g = group(store, version, create=True)
    committed = state(g)[0]
    _preallocate(g, committed + len(rows))
    g["plan"].resize((len(rows),))
    g["plan"][:] = np.asarray(rows, np.int64)
    g.attrs["plan_meta"] = json.dumps(meta, sort_keys=True)
    _set_state(store, g, committed, 0, len(rows))


def _preallocate(g: h5py.Group, rows: int, block: int = 65536) -> None:
    """Allocate the run's file space up front, so batch commits write in place.

    Readers open the file without HDF5's SWMR mode: metadata that grows while a reader
    has the file open (a resized dataset) can point past the end it read at open time.
    After this, a commit only rewrites allocated chunks and one fixed-size attribute.
    """
    for name in ("row", "embedding", "content_hash"):
        ds = g[name]
        start = ds.shape[0]
        if start >= rows:
            continue
        ds.resize(rows, axis=0)
        for lo in range(start, rows, block):  # written, not just resized: chunks are allocated lazily
            hi = min(rows, lo + block)
            ds[lo:hi] = np.zeros((hi - lo, *ds.shape[1:]), ds.dtype)


def plan(store: "Store", version: str) -> tuple[np.ndarray, int, dict] | None:
    """(plan rows, cursor, plan meta) of an unfinished run, or None."""
    g = group(store, version)
    if g is None:
        return None
    _, cursor, plan_len = state(g)
    if plan_len == 0:
        return None
    return g["plan"][:plan_len], cursor, json.loads(g.attrs.get("plan_meta", "{}"))


def commit_batch(store: "Store", version: str, rows: np.ndarray, embedding: np.ndarray,
                 hashes: list[str], cursor: int, publish: bool = True) -> None:
    """Append re-embedded rows (unit length) and advance the plan cursor, in one commit;
    `publish` also shows every committed row to readers."""
    store.require_writer()
    g = group(store, version, create=True)
    committed, _, plan_len = state(g)
    hi = committed + len(rows)
    for name, values in (("row", np.asarray(rows, np.int64)), ("embedding", embedding),
                         ("content_hash", np.array([h.encode() for h in hashes], "S64"))):
        if g[name].shape[0] < hi:  # normally preallocated by start_plan
            g[name].resize(hi, axis=0)
        if len(rows):
            g[name][committed:hi] = values
    store.h5.flush()  # the rows reach the file before the state that commits them
    _set_state(store, g, hi, cursor, plan_len, publish)


def finish_plan(store: "Store", version: str) -> None:
    g = group(store, version)
    if g is not None:
        _set_state(store, g, state(g)[0], 0, 0, publish=True)


def drop(store: "Store", version: str) -> int:
    """Delete a version's overlay (prune); returns how many rows it held."""
    g = group(store, version)
    if g is None:
        return 0
    count = state(g)[0]
    del store.h5[f"{GROUP}/{BACKFILL}/{version}"]
    store.h5.flush()
    store.invalidate()
    return count


def view(store: "Store", version: str | None = None) -> OverlayView | None:
    """The overlay seen by queries of `version` (default: the active model), or None.

    Each row shows the embedding of the latest model of the lineage that made one: its
    original (if that model is in the lineage) or a backfill. So a row enrolled by v2
    keeps its v2 embedding under v2 queries even if an earlier v1 backfill (made while
    v1 was the query model again) also covers it.
    """
    picked = _pick(store, version)
    if picked is None:
        return None
    rows, names, parts, keep = picked
    blocks = [np.asarray(g["embedding"][:n], np.float32)[use] for g, n, use in parts]
    return OverlayView(rows, names, np.concatenate(blocks)[keep])


def _pick(store: "Store", version: str | None):
    """view()'s rows (ascending) and versions, with where to read their embeddings:
    ([(group, published rows, rows used)], positions in their concatenation); or None."""
    present = versions(store)
    chain = lineage(store, version)
    if not present or not set(present) & set(chain):
        return None
    rank = {v: i for i, v in enumerate(chain)}
    n_rows = store.committed
    names_, codes = stored_models(store, n_rows)  # one decode per run of equal rows, not per row
    base = np.array([rank.get(m, -1) for m in names_], np.int64)[codes]
    rows, names, parts = [], [], []
    for v in chain:
        g = group(store, v) if v in present else None
        if g is None:
            continue
        n = published(g)
        r = g["row"][:n]
        use = (r < n_rows) & (base[np.minimum(r, max(n_rows - 1, 0))] < rank[v]) if n_rows else r < 0
        rows.append(r[use])
        names.append(np.full(int(use.sum()), v, dtype=object))
        parts.append((g, n, use))
    all_rows = np.concatenate(rows)
    if not all_rows.size:
        return None
    # Later lineage entries (newer models) win: keep the last occurrence of each row.
    _, last = np.unique(all_rows[::-1], return_index=True)
    keep = len(all_rows) - 1 - last  # in ascending row order
    return all_rows[keep], np.concatenate(names)[keep].astype(str), parts, keep


def apply_models(store: "Store", rows: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Store hook: `models` of the ascending `rows`, with rows re-embedded for the active
    model reporting the version that re-embedded them."""
    shown = active_models(store)
    if shown is None or not rows.size:
        return models
    v_rows, v_versions = shown
    pos = np.minimum(np.searchsorted(v_rows, rows), len(v_rows) - 1)
    hit = v_rows[pos] == rows
    if not hit.any():
        return models
    out = models.astype(object)
    out[hit] = v_versions[pos[hit]]
    return out.astype(str)


def apply_embeddings(store: "Store", out: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """Store hook: substitute re-embedded rows into `out` (all committed rows, or `rows`)."""
    v = _active_view(store)
    if v is None or not len(v.rows):
        return out
    n = store.committed
    where = np.full(n, -1, np.int64)
    inside = v.rows < n
    where[v.rows[inside]] = np.flatnonzero(inside)
    pick = where if rows is None else where[np.asarray(rows, np.int64)]
    hit = pick >= 0
    out[hit] = v.embedding[pick[hit]]
    return out


def check(store: "Store") -> list[str]:
    """Integrity of every overlay: rows in range and unique, vectors finite and unit length."""
    problems = []
    for v in versions(store):
        g = group(store, v)
        n = state(g)[0]
        rows, emb = g["row"][:n], np.asarray(g["embedding"][:n], np.float32)
        if n > min(g["row"].shape[0], g["embedding"].shape[0]):
            problems.append(f"backfill {v}: committed count {n} exceeds its datasets")
            continue
        if n and (rows.min() < 0 or rows.max() >= store.committed):
            problems.append(f"backfill {v}: row numbers outside 0..{store.committed - 1}")
        if len(np.unique(rows)) != n:
            problems.append(f"backfill {v}: a row is backfilled twice")
        if n and (not np.isfinite(emb).all() or np.abs(np.linalg.norm(emb, axis=1) - 1).max() > 1e-2):
            problems.append(f"backfill {v}: embeddings not finite unit vectors")
    return problems


def checksum_part(store: "Store") -> str:
    """Store hook: what the searchable content depends on beyond the committed batches."""
    present = versions(store)
    if not present:
        return ""
    counts = {v: published(group(store, v)) for v in present}
    return json.dumps({"lineage": lineage(store), "overlay": counts}, sort_keys=True)


def _active_view(store: "Store") -> OverlayView | None:
    if GROUP not in store.h5:
        return None  # the common case: no rollout has happened, no cost
    if "overlay_view" not in store._cache:
        store._cache["overlay_view"] = view(store)
    return store._cache["overlay_view"]


def active_models(store: "Store") -> tuple[np.ndarray, np.ndarray] | None:
    """(rows ascending, version that re-embedded each) of the active model's overlay, or
    None: what a row's `model` reports, without reading the overlay's embeddings."""
    if GROUP not in store.h5:
        return None
    if "overlay_models" not in store._cache:
        cached = store._cache.get("overlay_view")
        picked = (cached.rows, cached.versions) if cached is not None else _pick(store, None)
        store._cache["overlay_models"] = None if picked is None else (picked[0], picked[1])
    return store._cache["overlay_models"]
