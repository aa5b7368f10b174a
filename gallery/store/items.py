"""Rows of a store: enrol (rows appended as new segments) and remove (deletion files).
Reads are reads.py.

Commit protocol (manifest.py): an enrol writes its rows to a new segment file, fsyncs it
and commits a manifest listing it with the batches' checksums and the new committed count
and chain; a removal writes a deletion file the same way. Until the manifest is replaced
the rows or tombstones do not exist; a writer killed before that leaves an orphan file
the next writer deletes. An enrol larger than SEGMENT_ROWS commits one segment per
SEGMENT_ROWS rows (the gallery is then a prefix of the enrol, in whole segments).
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from gallery.errors import BadInput, NotFound
from gallery.preprocess import l2_normalize
from gallery.store import idindex, schema, segments, spaces
from gallery.store import manifest as mf
from gallery.store.compact import compact, small_segments
from gallery.store.reads import snapshot
from gallery.store.schema import ITEM_COLUMNS, SEGMENT_COLUMNS
from gallery.store.spaces import model_dim

if TYPE_CHECKING:
    from gallery.store.core import Store

log = logging.getLogger(__name__)

SPACE_HEADROOM = 4 << 20  # HDF5 metadata, chunk padding, the next manifest
SEGMENT_ROWS = 1 << 16    # rows per segment (and per commit) of a large enrol: built in memory (128 MiB at dim 512)
AUTO_COMPACT_FILES = 64   # small segments or deletion files past which a writer compacts


def batch_sha256(ids: Sequence[str], identities: Sequence[str], models: Sequence[str],
                 embedding: np.ndarray) -> str:
    """Checksum of one batch as stored: strings, then the embedding bytes."""
    digest = hashlib.sha256()
    for column in (ids, identities, models):
        for value in column:
            digest.update(str(value).encode("utf-8") + b"\0")
    digest.update(np.ascontiguousarray(embedding).tobytes())
    return digest.hexdigest()


def chain(previous: str, batch: str) -> str:
    return hashlib.sha256(f"{previous}:{batch}".encode()).hexdigest()


def _validate(store: "Store", emb: np.ndarray, ids: list[str], identities: list[str], version: str) -> np.ndarray:
    """Everything is checked before the first byte is written: bad input changes nothing.
    Returns the ids' schema.id_hash values (written with the rows)."""
    dim = model_dim(store, version)  # the enrolling model's own dimension (spaces.py)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise BadInput(f"embeddings must be a non-empty (N, {dim}) array, got shape {emb.shape}")
    if emb.shape[1] != dim:
        where = f"store {store.path} has {dim}" if dim == store.dim else f"model {version} of {store.path} gives {dim}"
        raise BadInput(f"embeddings have dimension {emb.shape[1]}, {where}")
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
        raise BadInput(f"embeddings contain NaN or inf in {bad.size} row(s), first row {bad[0]}")
    zero = np.flatnonzero(np.linalg.norm(emb, axis=1) == 0)
    if zero.size:
        raise BadInput(f"embeddings contain {zero.size} all-zero row(s), first row {zero[0]}")
    if len(ids) != len(emb) or len(identities) != len(emb):
        raise BadInput(f"{len(emb)} embeddings but {len(ids)} ids and {len(identities)} identities")
    if any(not i for i in ids):
        raise BadInput("empty item id in input")
    for name, values in (("id", ids), ("identity", identities)):
        width = int(ITEM_COLUMNS[name][1:])
        long = [v for v in values if len(v.encode("utf-8")) > width]
        if long:
            raise BadInput(f"{name} longer than {width} bytes (UTF-8): {long[0][:40]}...")
    uniq, counts = np.unique(np.asarray(ids, dtype=object).astype(str), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise BadInput(f"duplicate ids in input: {', '.join(dup[:5])}" + (" ..." if dup.size > 5 else ""))
    id_hashes = schema.id_hash(ids)
    existing = idindex.find(store, ids, id_hashes)  # reads 8 bytes per stored row, not the ids
    clash = [i for i in ids if i in existing]
    if clash:
        raise BadInput(f"ids already in store (removed ids are never reused): {', '.join(clash[:5])}"
                       + (" ..." if len(clash) > 5 else ""))
    return id_hashes


def enroll(
    store: "Store",
    embeddings: np.ndarray,
    ids: Sequence[str],
    identities: Sequence[str] | None = None,
    *,
    model_version: str | None = None,
    content_hashes: Sequence[str] | None = None,
    batch_size: int = 4096,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Append rows in committed batches. identities default to the ids."""
    store.require_writer()
    version = store.resolve_version(model_version or store.active_model)
    emb = np.asarray(embeddings)
    if not np.issubdtype(emb.dtype, np.number):
        raise BadInput(f"embeddings must be numeric, got dtype {emb.dtype}")
    ids = [str(i) for i in ids]
    identities = ids if identities is None else [str(i) for i in identities]
    with np.errstate(over="ignore"):  # no RuntimeWarning line: the BadInput below says it
        emb = emb.astype(np.float32, copy=False)  # values beyond float32 become inf: rejected below
    id_hashes = _validate(store, emb, ids, identities, version)
    if batch_size < 1:
        raise BadInput(f"batch size must be >= 1, got {batch_size}")
    stored = l2_normalize(emb).astype(store.dtype)
    if content_hashes is None:
        content_hashes = [hashlib.sha256(row.tobytes()).hexdigest() for row in emb]
    elif len(content_hashes) != len(emb):
        raise BadInput(f"{len(emb)} embeddings but {len(content_hashes)} content hashes")
    _check_space(store, len(stored))
    start = store.committed
    for lo in range(0, len(stored), SEGMENT_ROWS):
        hi = min(lo + SEGMENT_ROWS, len(stored))
        with store.transaction():
            _commit_segment(store, stored[lo:hi], ids[lo:hi], identities[lo:hi], version,
                            list(content_hashes[lo:hi]), id_hashes[lo:hi], batch_size)
            if hi == len(stored):  # the acknowledgement is the last segment's commit
                result = {"event": "enroll", "model": version, "rows": len(stored), "start": start,
                          "stop": start + len(stored)}
                store.append_history(result)
        if progress is not None:
            progress(hi - lo)
    store.invalidate()
    auto_compact(store)
    return result


def auto_compact(store: "Store") -> None:
    """Merge small files once there are many (bounded read cost and manifest size)."""
    if len(small_segments(store)) > AUTO_COMPACT_FILES or len(store.manifest["deletions"]) > AUTO_COMPACT_FILES:
        compact(store)


def _check_space(store: "Store", rows: int) -> None:
    """Refuse an enrol the disk cannot hold, before the first byte is written: the rows'
    bytes (as stored, with HDF5 checksums) plus a new manifest and headroom."""
    row_bytes = max(spaces.model_dims(store).values()) * np.dtype(store.dtype).itemsize + sum(
        np.dtype(kind).itemsize for kind in SEGMENT_COLUMNS.values())
    need = int(1.1 * rows * row_bytes) + len(str(store.manifest)) + SPACE_HEADROOM
    mf.check_space(store.dir, need, f"enrolling {rows} rows", store.path)


def _commit_segment(store: "Store", emb: np.ndarray, ids: list[str], identities: list[str],
                    version: str, hashes: list[str], id_hashes: np.ndarray, batch_size: int) -> None:
    """Write one segment and list it (the transaction around it commits)."""
    _check_space(store, len(emb))  # again per segment: another process may be filling the disk
    m = store.manifest
    lo = int(m["committed"])
    now = time.time()
    models = [version] * len(emb)
    values = {"id": _encode(ids), "identity": _encode(identities), "model": _encode(models),
              "content_hash": _encode(hashes), "enrolled_at": np.full(len(emb), now), "id_hash": id_hashes}
    with store.write_files() as new:
        name = new.name("seg")
        written = segments.write_rows(store.dir, name, values, emb, store.durable)
        m["segments"].append(dict(written, start=lo, rows=len(emb), dim=int(emb.shape[1]),
                                      model=version))
    chain_value = m["chain"]
    for b in range(0, len(emb), batch_size):  # checksum records per batch (verify, index catch-up)
        e = min(b + batch_size, len(emb))
        digest = batch_sha256(ids[b:e], identities[b:e], models[b:e], emb[b:e])
        chain_value = chain(chain_value, digest)
        m["batches"].append({"start": lo + b, "stop": lo + e, "sha256": digest, "chain": chain_value,
                             "model": version})
    m["chain"] = chain_value
    m["committed"] = lo + len(emb)
    store.commit()  # inside the caller's transaction: at its end, with the history record if any


def remove(store: "Store", ids: Sequence[str]) -> dict:
    """Tombstone rows by id. Unknown ids -> BadInput (nothing changed)."""
    store.require_writer()
    wanted = [str(i) for i in ids]
    if not wanted:
        raise BadInput("no ids given to remove")
    where = idindex.find(store, wanted)
    unknown = [i for i in wanted if i not in where]
    if unknown:
        raise NotFound(f"unknown ids: {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else ""))
    rows = np.array(sorted({where[i] for i in wanted}), dtype=np.int64)
    fresh = rows[~snapshot(store)[2][rows]]
    by_row = {row: item for item, row in where.items()}
    result = {"event": "remove", "removed": int(fresh.size), "already_removed": int(rows.size - fresh.size),
              "ids": [by_row[r] for r in fresh.tolist()]}
    with store.transaction():
        if fresh.size:
            table = np.zeros(fresh.size, segments.DELETION_DTYPE)
            table["row"], table["at"] = fresh, time.time()
            mf.check_space(store.dir, table.nbytes + SPACE_HEADROOM, f"removing {fresh.size} rows",
                           store.path)
            with store.write_files() as new:
                name = new.name("del")
                written = segments.write_array(store.dir, name, table, store.durable)
                store.manifest["deletions"].append(dict(written, rows=int(fresh.size)))
            store.manifest["removed"] = int(store.manifest.get("removed", 0)) + int(fresh.size)
        store.append_history(result)
    store.invalidate()
    auto_compact(store)
    return result


def _encode(values: Sequence[str]) -> list[bytes]:
    return [v.encode("utf-8") for v in values]
