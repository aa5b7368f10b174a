"""Integrity check of a store: counts, per-batch checksums, ids and id hashes, models, index freshness.

`ok` is False only for real damage (a checksum or count that disagrees, duplicate
ids, an id_hash that is not its id's, rows naming unknown models, non-finite
vectors). A stale index or rows left past the committed count by an interrupted
enrol are warnings: both are repaired automatically (index rebuilt on the next
search, tail overwritten on the next enrol).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gallery.store import idindex
from gallery.store import items as items_mod
from gallery.store.schema import ITEM_COLUMNS

if TYPE_CHECKING:
    from gallery.store.core import Store


def verify(store: "Store") -> dict:
    problems: list[str] = []
    warnings: list[str] = []
    n = store.committed
    _check_lengths(store, n, problems, warnings)
    if not problems:
        _check_batches(store, n, problems)
    cols = store.columns() if not problems else None
    if cols is not None:
        _check_rows(store, cols, problems)
    if "rollout" in store.h5:  # backfilled rows live beside the batches (gallery/rollout/overlay.py)
        from gallery.rollout.overlay import check as check_backfill
        problems.extend(check_backfill(store))
    index_state = _check_index(store, problems, warnings)
    live = int((~cols["deleted"]).sum()) if cols is not None else None
    return {
        "ok": not problems, "path": str(store.path), "rows": n, "live": live,
        "removed": None if cols is None else n - live,
        "batches": len(items_mod.batch_records(store)), "index": index_state,
        "problems": problems, "warnings": warnings,
    }


def _check_lengths(store: "Store", n: int, problems: list[str], warnings: list[str]) -> None:
    group = store.h5["items"]
    for name in (*ITEM_COLUMNS, "embedding"):
        if name not in group:
            problems.append(f"/items/{name} is missing")
            continue
        length = group[name].shape[0]
        if length < n:
            problems.append(f"/items/{name} has {length} rows, committed count is {n}")
        elif length > n:
            warnings.append(f"/items/{name} has {length - n} uncommitted row(s) from an interrupted enrol (ignored)")


def _check_batches(store: "Store", n: int, problems: list[str]) -> None:
    """Recompute every committed batch's checksum and the running chain."""
    group = store.h5["items"]
    from gallery.store.layout import EMPTY_CHAIN

    chain = EMPTY_CHAIN
    expected_start = 0
    for record in items_mod.batch_records(store):
        lo, hi = record["start"], record["stop"]
        if hi > n:
            break  # a record written by a batch that never committed
        if lo != expected_start:
            problems.append(f"batch records skip rows {expected_start}..{lo}")
            return
        strings = [items_mod.decode(group[c][lo:hi]).tolist() for c in ("id", "identity", "model")]
        digest = items_mod.batch_sha256(*strings, group["embedding"][lo:hi])
        if digest != record["sha256"]:
            problems.append(f"checksum mismatch in rows {lo}..{hi} (data changed or corrupt)")
        chain = items_mod.chain(chain, record["sha256"])
        expected_start = hi
    if expected_start != n:
        problems.append(f"batch records cover {expected_start} rows, committed count is {n}")
    elif chain != store.chain:
        problems.append("batch chain checksum does not match the committed chain")


def _check_rows(store: "Store", cols: dict, problems: list[str]) -> None:
    ids = cols["id"]
    if len(set(ids.tolist())) != len(ids):
        problems.append("duplicate item ids")
    wrong = idindex.mismatches(store.h5["items"], store.committed)
    if wrong.size:  # the duplicate-id check and remove-by-id trust these hashes
        problems.append(f"id_hash does not match the id in {wrong.size} row(s), first row {wrong[0]}")
    unknown = sorted(set(cols["model"].tolist()) - set(store.model_versions()))
    if unknown:
        problems.append(f"rows embedded by unknown model version(s): {', '.join(unknown)}")
    for lo in range(0, store.committed, items_mod.READ_CHUNK):
        block = store.h5["items"]["embedding"][lo : lo + items_mod.READ_CHUNK].astype(np.float32)
        if not np.isfinite(block).all():
            problems.append(f"non-finite embedding values in rows {lo}..{lo + len(block)}")
            break
        norms = np.linalg.norm(block, axis=1)
        if len(block) and np.abs(norms - 1).max() > 1e-2:
            problems.append(f"embeddings not unit-length in rows {lo}..{lo + len(block)}")
            break


def _check_index(store: "Store", problems: list[str], warnings: list[str]) -> str:
    from gallery import index

    state, reason = index.sidecar_state(store)
    if state == "fresh":
        import json
        from pathlib import Path

        try:
            meta = json.loads(Path(str(index.sidecar_path(store)) + ".json").read_text())
        except (OSError, ValueError):
            meta = {}
        from gallery.store.items import snapshot

        committed, _, deleted = snapshot(store)  # the same view the checksum is computed over
        live = int((~deleted).sum())
        # Re-check freshness on this very read: a concurrent reader may have replaced the
        # sidecar since sidecar_state() looked (it then belongs to another snapshot).
        same = (meta.get("checksum"), meta.get("rows")) == (store.content_checksum(), committed)
        dead = int(meta.get("dead", 0))  # removed rows the index masks (gallery/index/sidecar.py)
        if same and int(meta.get("count", -1)) != live + dead:
            problems.append(f"index claims to be fresh but holds {meta.get('count')} vectors for {live} "
                            f"live rows (+{dead} masked); run `gallery reindex`")
    if state == "stale":
        warnings.append(f"index is stale ({reason}); it is caught up or rebuilt on the next search")
    elif state == "corrupt":
        warnings.append(f"index sidecar unreadable ({reason}); it is rebuilt on the next search")
    return state
