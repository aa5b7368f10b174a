"""`gallery migrate`: a single-file store (schema v1 or v2, one mutable HDF5 file) becomes
the directory store (schema.py), under the same path; a directory store of schema v3 (one
dimension) is renumbered v4 by one manifest commit.

Killable at any point, and rerunning it finishes the job:
  1. under the old file's lock, the new layout is built in `.NAME.migrating/` next to it
     (segments, deletion file, backfill overlays and plans, MANIFEST last; all fsynced);
  2. the old file is renamed to `NAME.v2-backup` (kept: delete it once satisfied);
  3. the directory is renamed to NAME; the parent directory is fsynced.
A kill in 1 leaves the old file in force (the rerun starts 1 again); between 2 and 3 the
path is missing and every command says to rerun `gallery migrate`, which does step 3.
The committed rows only are copied (an interrupted enrol's tail is dropped), and an overlay
written in the older 3-field `state` format counts every committed row as published.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from gallery.errors import BadInput
from gallery.store import bytelog, schema, segments
from gallery.store import manifest as mf
from gallery.h5safe import refuse_pointers
from gallery.store.locking import WriterLock
from gallery.store.schema import ModelInfo

log = logging.getLogger(__name__)

LEGACY_VERSIONS = (1, 2)
BLOCK = 1 << 16  # rows copied per segment (each built in memory)


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".v2-backup")


def work_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.migrating")


def migrate_path(path: str | Path, durable: bool | None = None, progress: Callable[[int], None] | None = None,
                 on_total: Callable[[int], None] | None = None) -> dict:
    """Convert (or finish converting) the single-file store at `path`; returns a summary.
    `on_total(rows)`, then `progress(n)` as each block of rows is copied."""
    path = Path(path)
    durable = mf.durable_default() if durable is None else durable
    backup, work = backup_path(path), work_path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        if (path / mf.NAME).is_file():
            lock = WriterLock(path).acquire()  # a writer command even when there is nothing to do
            try:
                return _bump(path, mf.load(path), durable)
            finally:
                lock.release()
        raise BadInput(f"{path} is a folder but not a gallery store")
    if not path.exists() and backup.is_file() and (work / mf.NAME).is_file():
        os.rename(work, path)  # step 3 of a run killed after step 2
        mf.fsync_path(parent, durable)
        return {"path": str(path), "schema_version": schema.SCHEMA_VERSION, "migrated": True,
                "backup": str(backup), "finished_earlier_run": True}
    source = path if path.is_file() else backup
    if not source.is_file():
        raise BadInput(f"store not found: {path}")
    lock = WriterLock(source).acquire()
    try:
        if work.exists():
            shutil.rmtree(work)  # a run killed during step 1: start over
        work.mkdir()
        summary = _convert(source, work, durable, progress, on_total)
        if source == path:
            os.rename(path, backup)
            mf.fsync_path(parent, durable)
        os.rename(work, path)
        mf.fsync_path(parent, durable)
    finally:
        lock.release()
        Path(str(source) + ".lock").unlink(missing_ok=True)
    log.info("migrated %s to schema v%d (old file kept as %s)", path, schema.SCHEMA_VERSION, backup)
    return {"path": str(path), "schema_version": schema.SCHEMA_VERSION, "migrated": True,
            "backup": str(backup), **summary}


def _bump(path: Path, manifest: dict, durable: bool) -> dict:
    """A directory store of an older readable schema (v3: one dimension) is a valid store of
    the current one: one manifest commit renumbers it (atomic, so a kill leaves either)."""
    found = int(manifest.get("schema_version", 0))
    if found >= schema.SCHEMA_VERSION or found not in schema.READABLE_SCHEMAS:
        return {"path": str(path), "schema_version": found, "migrated": False}
    manifest["version"] = int(manifest["version"]) + 1
    manifest["schema_version"] = schema.SCHEMA_VERSION
    manifest["history"].append({"at": schema.now_iso(), "pid": os.getpid(), "event": "migrate",
                                "from": found, "to": schema.SCHEMA_VERSION})
    mf.commit(path, manifest, durable)
    log.info("migrated %s from schema v%d to v%d (manifest only)", path, found, schema.SCHEMA_VERSION)
    return {"path": str(path), "schema_version": schema.SCHEMA_VERSION, "migrated": True, "from": found}


def _open_legacy(path: Path) -> tuple[h5py.File, int]:
    """(the open single-file store, its schema version); BadInput naming what is wrong."""
    try:
        if not h5py.is_hdf5(path):
            raise OSError("no HDF5 signature (")
        h5 = h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as exc:
        reason = str(exc).split("(")[0].strip() or type(exc).__name__
        cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(exc))
        if cut:  # say how much is missing: a copy cut short, or a write that hit a size limit
            reason = f"truncated: {cut[1]} of {cut[2]} bytes"
        raise BadInput(f"cannot open store {path}: not a readable HDF5 file ({reason})") from None
    if h5.attrs.get("format") != schema.FORMAT:
        h5.close()
        raise BadInput(f"{path} is not a gallery store (no format={schema.FORMAT} attribute)")
    refuse_pointers(h5, path)  # the old file is input: its data must be its own (h5safe)
    return h5, int(h5.attrs.get("schema_version", 0))


def legacy_schema(path: Path) -> int:
    h5, version = _open_legacy(path)
    h5.close()
    return version


def _convert(source: Path, work: Path, durable: bool, progress: Callable[[int], None] | None = None,
             on_total: Callable[[int], None] | None = None) -> dict:
    h5, version = _open_legacy(source)
    with h5:
        if version not in LEGACY_VERSIONS:
            raise BadInput(f"store {source} has schema v{version}; `gallery migrate` converts v1 and v2 files")
        items = h5["items"]
        n = int(items.attrs["committed"])
        chain = items.attrs["chain"]
        chain = chain.decode() if isinstance(chain, bytes) else str(chain)
        manifest = {
            "format": schema.FORMAT, "schema_version": schema.SCHEMA_VERSION, "version": 0,
            "created": str(h5.attrs["created"]), "dim": int(h5.attrs["dim"]), "dtype": str(h5.attrs["dtype"]),
            "active_model": str(h5.attrs["active_model"]), "aliases": json.loads(h5.attrs.get("aliases", "{}")),
            "models": {v: ModelInfo.from_attrs(g.attrs).to_attrs() for v, g in h5["models"].items()},
            "parents": {}, "segments": [], "committed": n, "chain": chain, "deletions": [], "removed": 0,
            "overlays": {}, "next_file": 1,
            "batches": [r for r in bytelog.read(h5["batches"]) if r["stop"] <= n],
            "history": bytelog.read(h5["history"]),
        }
        counter = iter(range(1, 1 << 30))

        def name(kind: str) -> str:
            return segments.file_name(kind, next(counter))

        need = int(1.1 * source.stat().st_size) + (4 << 20)
        mf.check_space(work, need, f"migrating {source}")
        if on_total is not None:
            on_total(n)
        for lo in range(0, n, BLOCK):
            hi = min(n, lo + BLOCK)
            columns = {c: items[c][lo:hi] for c in schema.SEGMENT_COLUMNS if c != "id_hash"}
            # v1 has none (a v1 file may hold a half-written one from an old killed migration)
            columns["id_hash"] = items["id_hash"][lo:hi] if version == 2 else \
                schema.id_hash([v.decode("utf-8") for v in columns["id"].tolist()])
            models = np.unique(columns["model"]).tolist()
            file = name("seg")
            written = segments.write_rows(work, file, columns, items["embedding"][lo:hi], durable)
            manifest["segments"].append(dict(written, start=lo, rows=hi - lo, dim=manifest["dim"],
                                                 model=models[0].decode() if len(models) == 1 else None))
            if progress is not None:
                progress(hi - lo)
        deleted = np.flatnonzero(items["deleted"][:n] != 0)
        if deleted.size:
            table = np.zeros(deleted.size, segments.DELETION_DTYPE)
            table["row"], table["at"] = deleted, items["deleted_at"][:n][deleted]
            file = name("del")
            written = segments.write_array(work, file, table, durable)
            manifest["deletions"].append(dict(written, rows=int(deleted.size)))
            manifest["removed"] = int(deleted.size)
        if "rollout" in h5:
            manifest["parents"] = json.loads(h5["rollout"].attrs.get("parents", "{}"))
            for version_name, g in h5["rollout"].get("backfill", {}).items():
                manifest["overlays"][version_name] = _overlay(g, work, name, durable)
        manifest["next_file"] = next(counter)
        manifest["history"].append({"at": schema.now_iso(), "pid": os.getpid(), "event": "migrate",
                                    "from": version, "to": schema.SCHEMA_VERSION})
        mf.commit(work, manifest, durable)
        return {"from": version, "rows": n, "segments": len(manifest["segments"])}


def _overlay(g: h5py.Group, work: Path, name, durable: bool) -> dict:
    state = [int(v) for v in g.attrs["state"]]
    committed, cursor, plan_len = state[:3]  # the older format has no 4th (published) field
    out: dict = {"files": [], "plan": None}
    if committed:
        file = name("ovl")
        hashes = [h.decode() for h in g["content_hash"][:committed].tolist()]
        written = segments.write_overlay(work, file, g["row"][:committed], g["embedding"][:committed], hashes, durable)
        out["files"].append(dict(written, rows=committed))
    if plan_len:
        file = name("plan")
        written = segments.write_array(work, file, g["plan"][:plan_len].astype(np.int64), durable)
        out["plan"] = {**dict(written), "rows": plan_len, "cursor": cursor,
                       "meta": json.loads(g.attrs.get("plan_meta", "{}"))}
    return out
