"""The store's immutable data files: row segments, deletion files, backfill overlays, plans.

Row segment `seg-NNNNNN.h5`: one HDF5 file per commit of rows, datasets of schema.SEGMENT_COLUMNS
plus `embedding` (rows, dim); attrs `dim`, `dtype`. Overlay segment `ovl-NNNNNN.h5`: `row`
(int64 store rows), `embedding`, `content_hash`. Every dataset is chunked with HDF5's
fletcher32 filter, so a flipped bit in data a reader reads fails that read (the file is
named in the error) instead of returning a wrong vector; the manifest's sha256 of the
whole file is what `verify` checks. Deletion files `del-NNNNNN.npy` (row, deleted_at) and
plan files `plan-NNNNNN.npy` are small: readers check their sha256 on every load.

Each file is built in memory (HDF5's core driver), written with plain write() calls (so a
full disk or a quota is an ordinary OSError, never a half-flushed HDF5 file), fsynced,
renamed from NAME.tmp to NAME, and listed by a manifest only after that; it is never
opened for writing again.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
import h5py
import numpy as np

from gallery.errors import BadInput
from gallery.h5safe import refuse_pointers
from gallery.store import manifest as mf
from gallery.store.schema import SEGMENT_COLUMNS

DELETION_DTYPE = np.dtype([("row", "<i8"), ("at", "<f8")])
CHUNK_ROWS = 4096


class Damaged(BadInput):
    """A store file is missing, truncated or fails its checksum: the store cannot serve that
    read (exit 2 like any unreadable input; `verify` reports damage with exit 1)."""


def file_name(kind: str, number: int) -> str:
    suffix = "npy" if kind in ("del", "plan") else "h5"
    return f"{kind}-{number:06d}.{suffix}"


NAME_RE = re.compile(r"^(seg|ovl|del|plan)-\d{6}\.(h5|npy)(\.tmp)?$")


def _chunks(rows: int, width: int = 1) -> tuple[int, ...] | None:
    if rows == 0:
        return None
    per_chunk = max(1, min(rows, CHUNK_ROWS if width == 1 else max(1, (1 << 20) // (4 * width))))
    return (per_chunk,) if width == 1 else (per_chunk, width)


def _dataset(h5: h5py.File, name: str, data: np.ndarray) -> None:
    if len(data) == 0:
        h5.create_dataset(name, shape=data.shape, dtype=data.dtype)
        return
    width = data.shape[1] if data.ndim == 2 else 1
    h5.create_dataset(name, data=data, chunks=_chunks(len(data), width), fletcher32=True)


def _finish(directory: Path, name: str, data: bytes, durable: bool) -> dict:
    """Write `data` as NAME.tmp, fsync, rename to NAME (a file under its final name is always
    complete); returns its manifest record (name, size, sha256 of these very bytes)."""
    tmp = directory / f"{name}.tmp"
    tmp.unlink(missing_ok=True)
    mf.write_bytes(tmp, data, durable)
    os.rename(tmp, directory / name)
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _image(fill) -> bytes:
    """The bytes of an HDF5 file built in memory by fill(h5)."""
    with h5py.File(f"in-memory-{os.getpid()}", "w", driver="core", backing_store=False) as h5:
        fill(h5)
        h5.flush()
        return h5.id.get_file_image()


def write_rows(directory: Path, name: str, columns: dict[str, np.ndarray], embedding: np.ndarray,
               durable: bool = True) -> dict:
    def fill(h5: h5py.File) -> None:
        for column, kind in SEGMENT_COLUMNS.items():
            _dataset(h5, column, np.asarray(columns[column], dtype=kind))
        _dataset(h5, "embedding", embedding)
        h5.attrs.update({"format": "gallery.segment", "dim": embedding.shape[1], "dtype": str(embedding.dtype)})
    return _finish(directory, name, _image(fill), durable)


def write_overlay(directory: Path, name: str, rows: np.ndarray, embedding: np.ndarray, hashes: list[str],
                  durable: bool = True) -> dict:
    def fill(h5: h5py.File) -> None:
        _dataset(h5, "row", np.asarray(rows, np.int64))
        _dataset(h5, "embedding", embedding)
        _dataset(h5, "content_hash", np.array([h.encode() for h in hashes], "S64"))
        h5.attrs.update({"format": "gallery.overlay", "dim": embedding.shape[1]})
    return _finish(directory, name, _image(fill), durable)


def write_array(directory: Path, name: str, array: np.ndarray, durable: bool = True) -> dict:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return _finish(directory, name, buffer.getvalue(), durable)


def read_array(directory: Path, record: dict, display: Path | None = None, data: bytes | None = None) -> np.ndarray:
    """A small file (deletions, plan), checked against its manifest record before use
    (`data`: its bytes, read earlier)."""
    path = (display or directory) / record["file"]
    try:
        data = (directory / record["file"]).read_bytes() if data is None else data
    except OSError as exc:
        raise Damaged(f"store file {path} is unreadable ({exc.strerror}); run `gallery verify`") from None
    if len(data) != record["bytes"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise Damaged(f"store file {path} is damaged (checksum mismatch); run `gallery verify`")
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


class Files:
    """The HDF5 files of one manifest, opened on first use and kept open: a file retired by
    a later compaction stays readable through the open handle (POSIX unlink)."""

    def __init__(self, directory: Path, display: Path | None = None) -> None:
        self.directory = directory
        self.display = display or directory  # the store's name in messages
        self._open: dict[str, h5py.File] = {}
        self._datasets: dict[tuple[str, str], h5py.Dataset] = {}  # kept open: HDF5's chunk cache with them

    def get(self, name: str) -> h5py.File:
        h5 = self._open.get(name)
        if h5 is None:
            path = self.directory / name
            try:
                # A store file holds its own data: one pointing outside itself is refused (h5safe).
                h5 = refuse_pointers(h5py.File(path, "r", locking=False), self.display / name)
            except (FileNotFoundError, BadInput):  # BadInput: points outside itself, refused at open
                raise
            except (OSError, ValueError) as exc:
                raise Damaged(f"store file {self.display / name} is damaged ({str(exc).split('(')[0].strip()}); "
                              "run `gallery verify`") from None
            self._open[name] = h5
        return h5

    def read(self, name: str, dataset: str, selection: slice | np.ndarray = slice(None)) -> np.ndarray:
        """dataset[selection] of a file; a failed checksum or unreadable chunk -> Damaged."""
        try:
            ds = self._datasets.get((name, dataset))
            if ds is None:
                ds = self._datasets[(name, dataset)] = self.get(name)[dataset]
            return ds[selection]
        except Damaged:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise Damaged(f"store file {self.display / name} is damaged (cannot read {dataset}: "
                          f"{str(exc).split('(')[0].strip() or type(exc).__name__}); run `gallery verify`") from None

    def close(self) -> None:
        self._datasets.clear()
        for h5 in self._open.values():
            try:
                h5.close()
            except Exception:  # closing a damaged file must not hide the original error
                pass
        self._open.clear()
