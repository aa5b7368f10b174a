"""Adapter runs: older rows mapped into a new model's space (`gallery upgrade --adapter`).

A model of another dimension (or one never trained to be compatible) cannot compare its
queries with the rows of the model it replaces. An adapter (gallery/adapter.py, made by
`gallery train-adapter`) maps a v1 vector to v2's space; the run stores h(v1 row) for every
live v1 row as an overlay vector of v2 with provenance "adapter" (gallery/store/overlays.py),
never rewriting a row. The rows to map are fixed when the run starts (a plan file with its
cursor, manifest["overlays"][v2]["adapter_plan"]); each block of rows is one commit of its
overlay segment and the advanced cursor, so a run killed anywhere resumes from its last
block, and ends with exactly the rows and vectors of an uninterrupted run. A later real
backfill of a row (its image re-embedded by v2) wins over the adapter's vector.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gallery.errors import BadInput
from gallery.preprocess import l2_normalize
from gallery.store import overlays, spaces
from gallery.store.columns import stored_models

if TYPE_CHECKING:
    from gallery.store import Store

log = logging.getLogger(__name__)

BLOCK_ROWS = 16_384   # rows mapped per commit (an overlay segment of 32 MiB at 512-d)
PLAN = "adapter_plan"


def rows_to_map(store: "Store", version: str, from_version: str) -> np.ndarray:
    """Live rows embedded by `from_version` that `version` has no adapter vector for yet."""
    deleted = store.tombstones()
    names, codes = stored_models(store, deleted.size)
    if from_version not in names:
        return np.empty(0, np.int64)
    todo = (codes == names.index(from_version)) & ~deleted
    done = overlays.rows_of(store, version)[overlays.adapted_of(store, version)]
    todo[done[done < deleted.size]] = False
    return np.flatnonzero(todo)


def start(store: "Store", version: str, from_version: str, adapter: Any) -> dict:
    """Fix the run's rows (committed by the caller's transaction); or, when an unfinished
    run exists, check it is this adapter's. Returns the plan's meta."""
    existing = overlays.plan(store, version, PLAN)
    digest = adapter.identity["sha256"]
    if existing is not None:
        meta = existing[2]
        if meta.get("adapter_sha256") != digest or meta.get("from") != from_version:
            raise BadInput(f"an unfinished adapter run of {version} in {store.path} maps {meta.get('from')} with "
                           f"adapter {str(meta.get('adapter_sha256'))[:12]}...; rerun it with that adapter")
        return meta
    rows = rows_to_map(store, version, from_version)
    meta = {"from": from_version, "adapter_sha256": digest, "adapter_path": str(adapter.path.resolve()),
            "from_dim": adapter.from_dim, "to_dim": adapter.to_dim}
    overlays.set_plan(store, version, rows, meta, key=PLAN)
    store.commit()
    return meta


def run(store: "Store", version: str, adapter: Any, block_rows: int = BLOCK_ROWS,
        progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None) -> dict:
    """Map the planned rows from the cursor on, one commit per block; returns counts."""
    rows, cursor, meta = overlays.plan(store, version, PLAN) or (np.empty(0, np.int64), 0, {})
    if on_total is not None:
        on_total(len(rows))
    if progress is not None and cursor:
        progress(cursor)
    if cursor:
        log.info("resuming the adapter run of %s at %d/%d rows", version, cursor, len(rows))
    for lo in range(cursor, len(rows), block_rows):
        chunk = rows[lo : lo + block_rows]
        mapped = l2_normalize(adapter.apply(spaces.raw_vectors(store, chunk))).astype(store.dtype)
        hashes = [str(h) for h in store.values_at("content_hash", chunk)]
        with store.transaction():  # the block's vectors and the cursor after it: one commit
            overlays.add_rows(store, version, chunk, mapped, hashes, made_by=overlays.ADAPTER)
            overlays.set_plan(store, version, None, cursor=lo + len(chunk), key=PLAN)
            store.commit()
        if progress is not None:
            progress(len(chunk))
    return {"planned": int(len(rows)), "resumed_at": int(cursor), "from": meta.get("from"),
            "adapter_sha256": meta.get("adapter_sha256")}


def finish(store: "Store", version: str) -> None:
    """End the run (committed with the caller's transaction: the upgrade's switch)."""
    if overlays.plan(store, version, PLAN) is not None:
        overlays.set_plan(store, version, None, cursor=-1, key=PLAN)
        store.commit()
