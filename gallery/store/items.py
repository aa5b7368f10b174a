"""Rows of a store: enrol (whole committed batches) and tombstone (reads: reads.py,
re-exported here).

Commit protocol: a batch's rows are written past the committed count, its record
(with the batch sha256 and the new chain checksum) is appended to /batches, and
only then is /items.attrs["committed"] bumped and the file flushed. Readers only
look at rows below `committed`, so a writer killed mid-batch leaves a store whose
gallery is exactly the batches committed before it; the next writer overwrites
the leftover tail.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from gallery.errors import BadInput, GalleryError, NotFound
from gallery.preprocess import l2_normalize
from gallery.store import bytelog, idindex, schema
from gallery.store.reads import (READ_CHUNK, batch_records, columns, content_checksum,  # noqa: F401
                                 decode, embeddings, model_counts, snapshot, stored_models, values_at)
from gallery.store.schema import ITEM_COLUMNS

if TYPE_CHECKING:
    from gallery.store.core import Store

log = logging.getLogger(__name__)

SPACE_HEADROOM = 4 << 20  # one new chunk of every column (~3 MiB at dim 512) plus the logs


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


def _validate(store: "Store", emb: np.ndarray, ids: list[str], identities: list[str]) -> np.ndarray:
    """Everything is checked before the first byte is written: bad input changes nothing.
    Returns the ids' schema.id_hash values (written with the rows)."""
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise BadInput(f"embeddings must be a non-empty (N, {store.dim}) array, got shape {emb.shape}")
    if emb.shape[1] != store.dim:
        raise BadInput(f"embeddings have dimension {emb.shape[1]}, store {store.path} has {store.dim}")
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
    id_hashes = _validate(store, emb, ids, identities)
    if batch_size < 1:
        raise BadInput(f"batch size must be >= 1, got {batch_size}")
    stored = l2_normalize(emb).astype(store.dtype)
    if content_hashes is None:
        content_hashes = [hashlib.sha256(row.tobytes()).hexdigest() for row in emb]
    elif len(content_hashes) != len(emb):
        raise BadInput(f"{len(emb)} embeddings but {len(content_hashes)} content hashes")
    _check_space(store, len(stored))
    start = store.committed
    _truncate_tail(store, start)
    for lo in range(0, len(stored), batch_size):
        hi = min(lo + batch_size, len(stored))
        _commit_batch(store, stored[lo:hi], ids[lo:hi], identities[lo:hi], version,
                      list(content_hashes[lo:hi]), id_hashes[lo:hi])
        if progress is not None:
            progress(hi - lo)
    store.invalidate()
    result = {"event": "enroll", "model": version, "rows": len(stored), "start": start,
              "stop": start + len(stored)}
    store.append_history(result)
    return result


def _check_space(store: "Store", rows: int) -> None:
    """Refuse an enrol the disk cannot hold, before the first byte is written.

    HDF5 does not reliably report a full disk at the write that hit it (chunks sit in
    its cache until a flush or close), and a store whose file could not be extended
    can be left unopenable; so the free space is checked up front: twice the rows'
    bytes plus one fresh chunk of every column (chunks are allocated whole).
    """
    row_bytes = store.dim * np.dtype(store.dtype).itemsize + sum(
        np.dtype(kind).itemsize for kind in ITEM_COLUMNS.values())
    need = 2 * rows * row_bytes + SPACE_HEADROOM
    free = shutil.disk_usage(store.path.parent).free
    if free < need:
        raise GalleryError(f"not enough free disk space for {store.path}: enrolling {rows} rows needs "
                           f"~{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; nothing was written")


def _truncate_tail(store: "Store", committed: int) -> None:
    """Drop rows an interrupted enrol wrote past the committed count."""
    items = store.h5["items"]
    for name in (*ITEM_COLUMNS, "embedding"):
        if items[name].shape[0] != committed:
            items[name].resize(committed, axis=0)
    # Records of batches that never committed sit at the end: read back from there only
    # (reading every record made each enrol O(batches in the store)).
    batches = store.h5["batches"]
    keep = bytelog.count(batches)
    while keep and bytelog.record(batches, keep - 1)["stop"] > committed:
        keep -= 1
    bytelog.truncate(batches, keep)


def _commit_batch(store: "Store", emb: np.ndarray, ids: list[str], identities: list[str],
                  version: str, hashes: list[str], id_hashes: np.ndarray) -> None:
    _check_space(store, len(emb))  # again per batch: another process may be filling the disk
    items = store.h5["items"]
    lo = store.committed
    hi = lo + len(emb)
    now = time.time()
    models = [version] * len(emb)
    values = {
        "id": _encode(ids), "identity": _encode(identities), "model": _encode(models),
        "content_hash": _encode(hashes),
        "enrolled_at": np.full(len(emb), now), "deleted": np.zeros(len(emb), np.uint8),
        "deleted_at": np.zeros(len(emb)), "id_hash": id_hashes,
    }
    for name, column in values.items():
        items[name].resize(hi, axis=0)
        items[name][lo:hi] = column
    items["embedding"].resize(hi, axis=0)
    items["embedding"][lo:hi] = emb
    # Rows reach the file before the commit record: a write that fails (disk full)
    # raises here, while the batch does not exist yet.
    store.h5.flush()
    digest = batch_sha256(ids, identities, models, emb)
    new_chain = chain(store.chain, digest)
    bytelog.append(store.h5["batches"], {"start": lo, "stop": hi, "sha256": digest, "chain": new_chain,
                                      "model": version})
    # The commit point: until these two attrs are flushed the batch does not exist.
    # Fixed-width bytes (np.bytes_): rewritten in place, unlike a variable-length str.
    items.attrs["chain"] = np.bytes_(new_chain)
    items.attrs["committed"] = hi
    store.h5.flush()


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
    items = store.h5["items"]
    fresh = rows[idindex.read_rows(items["deleted"], rows) == 0]
    if fresh.size:
        # h5py point selection needs increasing indices: `rows` is sorted.
        items["deleted"][fresh] = np.ones(fresh.size, np.uint8)
        items["deleted_at"][fresh] = np.full(fresh.size, time.time())
        items.attrs["removed"] = int(items.attrs.get("removed", 0)) + int(fresh.size)
        store.h5.flush()
    store.invalidate()
    by_row = {row: item for item, row in where.items()}
    result = {"event": "remove", "removed": int(fresh.size), "already_removed": int(rows.size - fresh.size),
              "ids": [by_row[r] for r in fresh.tolist()]}
    store.append_history(result)
    return result


def _encode(values: Sequence[str]) -> list[bytes]:
    return [v.encode("utf-8") for v in values]
