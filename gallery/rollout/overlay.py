"""Backfill commits on top of the store's overlays (gallery/store/overlays.py holds the storage:
overlay segments listed in the manifest, views, checks).

A run's batches are buffered and written as one overlay segment at each publish point,
in the same manifest commit as the plan cursor that says how far the run got; so readers
see whole commits only, and a run killed at any point resumes from its last commit with
the same plan and batch boundaries (backfill.py).
"""

from __future__ import annotations

import weakref

import numpy as np

from gallery.store import Store, overlays

# A backfill's batches since its last commit, per open writer handle and version:
# {version: [cursor after the last batch, (rows, embedding, hashes), ...]}. Kept here, not
# on the Store: the buffer is the backfill's; it goes with the handle.
_PENDING: "weakref.WeakKeyDictionary[Store, dict[str, list]]" = weakref.WeakKeyDictionary()


def committed_rows(store: Store, version: str) -> np.ndarray:
    """Rows re-embedded by `version` that readers see (committed = published)."""
    return overlays.rows_of(store, version)


def start_plan(store: Store, version: str, rows: np.ndarray, meta: dict) -> None:
    """Fix the rows a backfill run visits (in order) so a resumed run makes the same batches."""
    with store.transaction():
        overlays.set_plan(store, version, rows, meta)
        store.commit()


def pending_rows(store: Store, version: str) -> int:
    """Rows re-embedded by this process since its last commit."""
    return sum(len(r) for r, _, _ in _PENDING.get(store, {}).get(version, [])[1:])


def commit_batch(store: Store, version: str, rows: np.ndarray, embedding: np.ndarray,
                 hashes: list[str], cursor: int, publish: bool = True) -> None:
    """Add re-embedded rows (unit length) and advance the plan cursor; `publish` commits
    everything buffered since the last commit (rows and cursor together), otherwise the
    batch waits in memory (a kill loses it; the resumed run redoes it identically)."""
    store.require_writer()
    # [cursor, batch, batch, ...]: the cursor after the last buffered batch, then the batches
    queue = _PENDING.setdefault(store, {}).setdefault(version, [None])
    queue[0] = int(cursor)
    queue.append((np.asarray(rows, np.int64), np.asarray(embedding), list(hashes)))
    if publish:
        flush(store, version)


def flush(store: Store, version: str) -> None:
    """Commit the buffered rows and the cursor of `version`'s run."""
    cursor, *queue = _PENDING.get(store, {}).pop(version, [None])
    with store.transaction():
        if queue:
            rows = np.concatenate([r for r, _, _ in queue])
            dim = overlays.version_dim(store, version)
            emb = np.concatenate([e.reshape(-1, dim) for _, e, _ in queue]).astype(store.dtype)
            overlays.add_rows(store, version, rows, emb, [h for _, _, hs in queue for h in hs])
        if cursor is not None and overlays.plan(store, version) is not None:
            overlays.set_plan(store, version, None, cursor=cursor)
        store.commit()


def finish_plan(store: Store, version: str) -> None:
    """Commit what is buffered and end the run (one commit; inside the caller's transaction
    when there is one)."""
    with store.transaction():
        flush(store, version)
        if overlays.record(store, version) is not None:
            overlays.set_plan(store, version, None, cursor=-1)
            store.commit()
