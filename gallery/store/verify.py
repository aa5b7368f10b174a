"""Integrity check of a store: every listed file (size, sha256), batch checksums, ids and id
hashes, models, deletions, overlays. (The index sidecar, derived data of the layer above,
is checked by gallery.index.check_sidecar; `Gallery.verify` and `gallery verify` add it.)

`ok` is False for real damage, and each problem names the damaged file: a file missing,
of the wrong size or failing its checksum; a batch whose rows do not hash to its record;
duplicate ids; an id_hash that is not its id's; rows naming unknown models; non-finite
vectors; a segment or overlay whose vectors do not have its model's dimension.
`quick=True` checks that every file exists with its recorded size only (no reading).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gallery.store import columns, idindex, overlays, reads, segments, spaces
from gallery.store import manifest as mf
from gallery.store.items import batch_sha256, chain
from gallery.store.schema import EMPTY_CHAIN

if TYPE_CHECKING:
    from gallery.store.core import Store


def verify(store: "Store", quick: bool = False) -> dict:
    problems: list[str] = []
    warnings: list[str] = []
    bad_files = file_problems(store, quick)
    problems.extend(problem for _, problem in bad_files)
    damaged = bool(bad_files)
    n = store.committed
    live = None
    if not quick and not damaged:
        try:
            _check_batches(store, n, problems)
            cols = store.columns()
            _check_rows(store, cols, problems)
            problems.extend(overlays.check(store))
            live = int((~cols["deleted"]).sum())
        except segments.Damaged as exc:
            problems.append(str(exc))
    elif not damaged:
        try:
            live = store.count()
        except segments.Damaged as exc:
            problems.append(str(exc))
    return {
        "ok": not problems, "path": str(store.path), "rows": n, "live": live,
        "removed": None if live is None else n - live, "quick": quick,
        "files": len(store.file_records()), "manifest_version": store.manifest_version,
        "batches": len(store.manifest["batches"]),
        "problems": problems, "warnings": warnings,
    }


def file_problems(store: "Store", quick: bool) -> list[tuple[str, str]]:
    """(file, problem) for every file the manifest lists that is missing, has another size or
    (unless quick) fails its sha256. `verify` reports them; a writer refuses to open on them."""
    found = []
    for kind, record in store.file_records():
        path = store.dir / record["file"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            found.append((record["file"], f"{kind} file {record['file']} is missing"))
            continue
        if size != record["bytes"]:
            found.append((record["file"], f"{kind} file {record['file']} has {size} bytes, "
                                          f"the manifest says {record['bytes']}"))
        elif not quick and mf.sha256_file(path) != record["sha256"]:
            found.append((record["file"], f"{kind} file {record['file']} fails its checksum (damaged on disk)"))
    return found


def _check_batches(store: "Store", n: int, problems: list[str]) -> None:
    """Recompute every committed batch's checksum and the running chain."""
    value = EMPTY_CHAIN
    expected_start = 0
    for record in store.manifest["batches"]:
        lo, hi = record["start"], record["stop"]
        if lo != expected_start:
            problems.append(f"batch records skip rows {expected_start}..{lo}")
            return
        strings = [columns.decode(columns.column_range(store, c, lo, hi)).tolist() for c in ("id", "identity", "model")]
        digest = batch_sha256(*strings, columns.column_range(store, "embedding", lo, hi))
        if digest != record["sha256"]:
            problems.append(f"checksum mismatch in rows {lo}..{hi} ({_files_of(store, lo, hi)})")
        value = chain(value, record["sha256"])
        expected_start = hi
    covered = sum(s["rows"] for s in store.manifest["segments"])
    if expected_start != n or covered != n:
        problems.append(f"batch records cover {expected_start} rows and segments {covered}, committed count is {n}")
    elif value != store.chain:
        problems.append("batch chain checksum does not match the committed chain")


def _files_of(store: "Store", lo: int, hi: int) -> str:
    names = [s["file"] for s in store.manifest["segments"] if s["start"] < hi and s["start"] + s["rows"] > lo]
    return ", ".join(names)


def _check_rows(store: "Store", cols: dict, problems: list[str]) -> None:
    ids = cols["id"]
    if len(set(ids.tolist())) != len(ids):
        problems.append("duplicate item ids")
    wrong = idindex.mismatches(store)
    if wrong.size:  # the duplicate-id check and remove-by-id trust these hashes
        problems.append(f"id_hash does not match the id in {wrong.size} row(s), first row {wrong[0]}")
    stored, _ = columns.stored_models(store, store.committed)
    unknown = sorted(set(stored) - set(store.model_versions()))
    if unknown:
        problems.append(f"rows embedded by unknown model version(s): {', '.join(unknown)}")
    deleted_rows = reads._deletions(store)[0]
    if deleted_rows.size and (deleted_rows.min() < 0 or deleted_rows.max() >= store.committed):
        problems.append(f"deletion files name rows outside 0..{store.committed - 1}")
    _check_dims(store, problems)
    for lo, block in _embedding_blocks(store):
        block = block.astype(np.float32)
        if not np.isfinite(block).all():
            problems.append(f"non-finite embedding values in rows {lo}..{lo + len(block)}")
            break
        norms = np.linalg.norm(block, axis=1)
        if len(block) and np.abs(norms - 1).max() > 1e-2:
            problems.append(f"embeddings not unit-length in rows {lo}..{lo + len(block)}")
            break


def _embedding_blocks(store: "Store"):
    """(first row, stored vectors) per READ_CHUNK rows of each segment (segments can differ in dim)."""
    for seg in store.manifest["segments"]:
        for lo in range(0, int(seg["rows"]), columns.READ_CHUNK):
            hi = min(int(seg["rows"]), lo + columns.READ_CHUNK)
            yield seg["start"] + lo, store._files.read(seg["file"], "embedding", slice(lo, hi))


def _check_dims(store: "Store", problems: list[str]) -> None:
    """Per-version dimensions (spaces.py): every segment's vectors have the dim it records,
    which is the dim of the model(s) that embedded its rows."""
    dims = spaces.model_dims(store)
    for seg in store.manifest["segments"]:
        if not seg["rows"]:
            continue
        width = store._files.get(seg["file"])["embedding"].shape[1]
        recorded = int(seg.get("dim", store.dim))
        models = [seg["model"]] if seg.get("model") else sorted(set(columns.decode(
            store._files.read(seg["file"], "model")).tolist()))
        wrong = [m for m in models if m in dims and dims[m] != width]
        if width != recorded or wrong:
            problems.append(f"segment {seg['file']} holds {width}-d vectors; the manifest says {recorded}-d"
                            + (f", model {wrong[0]} is {dims[wrong[0]]}-d" if wrong else ""))
