"""`gallery compact`: merge small files, one manifest commit, then remove what it replaced.

Runs of adjacent small segments (under SMALL_ROWS rows) become one segment each (rows keep
their numbers and order, so batch checksums, the chain and the index sidecar stay valid);
all deletion files become one; each backfill overlay's files become one. The merged files
are written and fsynced first, then one manifest commit swaps them in; a kill before the
commit leaves the old manifest and its files in force (the new files are orphans, removed
by the next writer). The replaced files are unlinked right after the commit: a reader that
loaded the older manifest opened all its files at open time (core.Store._pin) and keeps
reading them through those handles (POSIX unlink semantics), and a reader that loaded the
manifest but lost the race to open a file reloads the newer manifest. Writers compact
automatically past items.AUTO_COMPACT_FILES small files.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from gallery.store import manifest as mf
from gallery.store import overlays, reads, segments
from gallery.store.schema import SEGMENT_COLUMNS

if TYPE_CHECKING:
    from gallery.store.core import Store

log = logging.getLogger(__name__)

SMALL_ROWS = 1 << 14  # segments under this many rows are merged (a full enrol segment is 65,536)


def small_segments(store: "Store") -> list[int]:
    return [i for i, s in enumerate(store.manifest["segments"]) if s["rows"] < SMALL_ROWS]


def _runs(store: "Store") -> list[list[int]]:
    """Runs of >= 2 adjacent small segments of one dimension, each at most SMALL_ROWS * 4 rows."""
    runs: list[list[int]] = []
    current: list[int] = []
    rows = 0
    for i, seg in enumerate(store.manifest["segments"]):
        fits = seg["rows"] < SMALL_ROWS and rows + seg["rows"] <= 4 * SMALL_ROWS and (
            not current or store.manifest["segments"][current[-1]].get("dim") == seg.get("dim"))
        if fits:
            current.append(i)
            rows += seg["rows"]
            continue
        if len(current) > 1:
            runs.append(current)
        current, rows = ([i], seg["rows"]) if seg["rows"] < SMALL_ROWS else ([], 0)
    if len(current) > 1:
        runs.append(current)
    return runs


def plan(store: "Store") -> dict:
    over = {v: len(o["files"]) for v, o in store.manifest["overlays"].items()
            if max(Counter(f.get("provenance", "backfill") for f in o["files"]).values(), default=0) > 1}
    return {"segment_runs": _runs(store), "deletion_files": len(store.manifest["deletions"]), "overlays": over}


def compact(store: "Store", dry_run: bool = False) -> dict:
    if not dry_run:
        store.require_writer()
    todo = plan(store)
    runs = todo["segment_runs"]
    merge_deletions = todo["deletion_files"] > 1
    before = len(store.file_records())
    result = {"segments_before": len(store.manifest["segments"]), "merged_runs": len(runs),
              "deletion_files_merged": todo["deletion_files"] if merge_deletions else 0,
              "overlays_merged": sorted(todo["overlays"]), "dry_run": dry_run}
    if dry_run or not (runs or merge_deletions or todo["overlays"]):
        result.update(segments_after=result["segments_before"], files_removed=0)
        return result
    need = sum(store.manifest["segments"][i]["bytes"] for run in runs for i in run)
    need += sum(f["bytes"] for o in store.manifest["overlays"].values() for f in o["files"])
    mf.check_space(store.dir, int(1.1 * need) + (4 << 20), "compacting", store.path)
    old_files = set(store.data_files())
    with store.transaction():
        with store.write_files() as new:
            segs = store.manifest["segments"]
            merged = {run[0]: _merge_run(store, [segs[i] for i in run], new) for run in runs}
            dropped = {i for run in runs for i in run[1:]}
            store.manifest["segments"] = [merged.get(i, s) for i, s in enumerate(segs) if i not in dropped]
            if merge_deletions:
                rows, at = reads._deletions(store)
                table = np.zeros(rows.size, segments.DELETION_DTYPE)
                table["row"], table["at"] = rows, at
                name = new.name("del")
                written = segments.write_array(store.dir, name, table, store.durable)
                store.manifest["deletions"] = [dict(written, rows=int(rows.size))]
            for version in todo["overlays"]:
                _merge_overlay(store, version, new)
        store.append_history({"event": "compact", "files_before": before,
                              "segments": len(store.manifest["segments"])})
    retired = old_files - set(store.data_files())
    for name in retired:
        (store.dir / name).unlink(missing_ok=True)
    mf.fsync_path(store.dir, store.durable)
    result.update(segments_after=len(store.manifest["segments"]), files_removed=len(retired))
    log.info("compacted %s: %d files retired", store.path, len(retired))
    return result


def _merge_run(store: "Store", segs: list[dict], new) -> dict:
    lo = segs[0]["start"]
    hi = segs[-1]["start"] + segs[-1]["rows"]
    columns = {c: reads.column_range(store, c, lo, hi) for c in SEGMENT_COLUMNS}
    embedding = reads.column_range(store, "embedding", lo, hi)
    name = new.name("seg")
    written = segments.write_rows(store.dir, name, columns, embedding, store.durable)
    models = {s.get("model") for s in segs}
    return dict(written, start=lo, rows=hi - lo, dim=int(embedding.shape[1]),
                    model=models.pop() if len(models) == 1 else None)


def _merge_overlay(store: "Store", version: str, new) -> None:
    """One file per provenance (a backfill's vectors and an adapter's stay apart: the
    backfill wins where both have a row)."""
    over = store.manifest["overlays"][version]
    rows = overlays.rows_of(store, version)
    emb = overlays._read(store, version, "embedding")
    hashes = np.array([h.decode() for h in overlays._read(store, version, "content_hash").tolist()], dtype=object)
    adapted = overlays.adapted_of(store, version)
    files = []
    for made_by, mask in ((overlays.BACKFILL, ~adapted), (overlays.ADAPTER, adapted)):
        if not mask.any():
            continue
        name = new.name("ovl")
        written = segments.write_overlay(store.dir, name, rows[mask], emb[mask], list(hashes[mask]), store.durable)
        files.append(dict(written, rows=int(mask.sum()), dim=int(emb.shape[1]), provenance=made_by))
    over["files"] = files
