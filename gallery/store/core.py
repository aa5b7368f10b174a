"""The Store: open/create a gallery file, root attributes, history.

Model records (versions, aliases, thresholds) are the ModelRecords mixin in models.py.
Row-level work (enrol, remove, reading columns) lives in gallery/store/items.py (id
look-ups in idindex.py), integrity checks in verify.py, export in export.py; the Store methods for them
are one-line delegations so rollout code (gallery/rollout.py) can build on a
small, documented surface: `add_model`, `set_active_model`, `set_alias`,
`resolve_version`, `set_threshold`, `append_history`, `enroll`, `remove`,
`columns`, `values_at`, `tombstones`, `embeddings`, `search`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from gallery.errors import BadInput, GalleryError
from gallery.h5safe import refuse_pointers
from gallery.store import bytelog, migrations, schema
from gallery.store.layout import EMPTY_CHAIN, init_layout, write_model  # noqa: F401
from gallery.store.locking import WriterLock
from gallery.store.models import ModelRecords, with_stored_path
from gallery.store.schema import ModelInfo

log = logging.getLogger(__name__)

Progress = Callable[[int], None] | None


def _open_h5(path: Path, mode: str) -> h5py.File:
    # HDF5's own file locking is off: our flock serialises writers, and readers must
    # keep working while a writer is (or was, before a crash) holding the file.
    try:
        # HDF5 opened for writing writes to the file even when it then fails (a superblock
        # into an empty file), so a writer's file is checked read-only first. The check (a
        # store is data, never links to other files: h5safe) walks every object on a
        # throwaway handle: walking the real one would load every object header at open,
        # and a reader would then mix that older metadata with a concurrent writer's data.
        if mode != "r" and not h5py.is_hdf5(path):
            raise OSError("no HDF5 signature (")
        refuse_pointers(h5py.File(path, "r", locking=False), path).close()
        handle = h5py.File(path, mode, locking=False)
    except (OSError, ValueError) as exc:
        reason = str(exc).split("(")[0].strip() or type(exc).__name__
        if getattr(exc, "errno", None) == errno.EACCES:
            reason = "permission denied"
        cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(exc))
        if cut:  # say how much is missing: a copy cut short, or a write that hit a size limit
            reason = f"truncated: {cut[1]} of {cut[2]} bytes"
        raise BadInput(f"cannot open store {path}: not a readable HDF5 file ({reason})") from None
    return handle


class Store(ModelRecords):
    """One gallery in one HDF5 file. Use as a context manager; mode "r" or "a"."""

    def __init__(self, path: Path, h5: h5py.File, lock: WriterLock | None) -> None:
        self.path = path
        self.h5 = h5
        self._lock = lock
        self._cache: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, model: ModelInfo, dtype: str = "float32") -> "Store":
        """Create a new store with its first model (active for queries); returns a writer."""
        path = Path(path)
        if path.exists():
            raise BadInput(f"store already exists: {path}")
        if dtype not in schema.DTYPES:
            raise BadInput(f"embedding dtype {dtype!r} not one of {schema.DTYPES}")
        from gallery.limits import check_dim
        check_dim(model.dim, f"store {path}")
        schema.check_version_name(model.version)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))  # EROFS etc. named here
        except OSError as exc:
            raise BadInput(f"cannot write store {path}: {exc.strerror} ({tmp})") from None
        try:
            # Built under a temporary name, linked into place when complete (no half-made
            # store; link, unlike rename, never replaces a store another process created).
            with h5py.File(tmp, "w", locking=False) as h5:
                init_layout(h5, with_stored_path(path, model), dtype)
            os.link(tmp, path)
        except FileExistsError:
            raise BadInput(f"store already exists: {path}") from None
        except OSError as exc:
            raise BadInput(f"cannot write store {path}: {exc.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
        lock = WriterLock(path).acquire()
        store = cls(path, _open_h5(path, "r+"), lock)
        store.append_history({"event": "init", "model": model.version, "dim": model.dim})
        return store

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "Store":
        """Open for reading ("r", never blocked by writers) or writing ("a", takes the lock)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        if path.is_dir():
            raise BadInput(f"{path} is a directory, not a store file (give the .h5 file inside it)")
        if not path.is_file():
            raise BadInput(f"store not found: {path}")
        lock = WriterLock(path).acquire() if mode == "a" else None
        try:
            store = cls(path, _open_h5(path, "r+" if mode == "a" else "r"), lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        try:
            store._check_format()
            if mode == "a":
                migrations.migrate(store.h5, str(path), store.append_history)
            else:
                migrations.check_readable(store.h5, str(path))
        except BaseException:
            store.close()  # a refused store must not stay open: it would block a writer in this process
            raise
        return store

    def _check_format(self) -> None:
        if self.h5.attrs.get("format") != schema.FORMAT:
            self.close()
            raise BadInput(f"{self.path} is not a gallery store (no format={schema.FORMAT} attribute)")
        for group in ("models", "items"):
            if group not in self.h5:
                self.close()
                raise BadInput(f"store {self.path} is corrupt: /{group} is missing")

    def close(self) -> None:
        try:
            if self.h5.id.valid:
                self.h5.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        return self._lock is not None and self._lock.held

    def require_writer(self) -> None:
        if not self.writable:
            raise GalleryError(f"store {self.path} is open read-only; open it with mode='a'")

    def invalidate(self) -> None:
        """Drop cached columns after a write (or to see another writer's commits)."""
        self._cache.clear()

    # ---- root attributes ---------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.h5.attrs["dim"])

    @property
    def dtype(self) -> str:
        return str(self.h5.attrs["dtype"])

    @property
    def schema_version(self) -> int:
        return int(self.h5.attrs["schema_version"])

    @property
    def committed(self) -> int:
        """Rows that belong to the gallery (live or tombstoned)."""
        return int(self.h5["items"].attrs["committed"])

    @property
    def chain(self) -> str:
        """Running checksum over every committed batch."""
        return bytes(self.h5["items"].attrs["chain"]).decode()

    # ---- history -----------------------------------------------------------------
    def append_history(self, record: dict) -> None:
        """Append one JSON event to /history (append-only; never rewritten)."""
        self.require_writer()
        entry = {"at": schema.now_iso(), "pid": os.getpid(), **record}
        bytelog.append(self.h5["history"], entry)
        self.h5.flush()

    def history(self) -> list[dict]:
        return bytelog.read(self.h5["history"])

    # ---- rows, search, integrity (delegated) -------------------------------------
    def enroll(self, embeddings: np.ndarray, ids: Sequence[str], identities: Sequence[str] | None = None,
               **kwargs: Any) -> dict:
        from gallery import validate
        from gallery.store import items
        validate.enrolment(embeddings, ids, identities)  # values no store may hold (gallery/validate.py)
        return self._with_index_caught_up(items.enroll(self, embeddings, ids, identities, **kwargs))

    def remove(self, ids: Sequence[str]) -> dict:
        from gallery.store import items
        return self._with_index_caught_up(items.remove(self, ids))

    def _with_index_caught_up(self, result: dict) -> dict:
        """The writer brings an existing index sidecar up to date (appends added, removals
        masked) so readers find it fresh rather than each catching up on their own."""
        from gallery import index
        result["index"] = index.refresh_after_write(self)
        return result

    def find_ids(self, ids: Sequence[str]) -> dict[str, int]:
        """{id: row} for those of `ids` the store holds (live or removed: ids are never reused)."""
        from gallery.store import idindex
        return idindex.find(self, ids)

    def columns(self) -> dict[str, np.ndarray]:
        from gallery.store import items
        return items.columns(self)

    def values_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        from gallery.store import items
        return items.values_at(self, name, rows)

    def tombstones(self) -> np.ndarray:
        """bool per committed row: removed (1 byte per row, not the columns)."""
        from gallery.store import items
        return items.snapshot(self)[2]

    def embeddings(self, rows: np.ndarray | None = None) -> np.ndarray:
        from gallery.store import items
        return items.embeddings(self, rows)

    def content_checksum(self) -> str:
        from gallery.store import items
        return items.content_checksum(self)

    def count(self) -> int:
        """Live (not tombstoned) rows."""
        return int((~self.tombstones()).sum())

    def verify(self) -> dict:
        from gallery.store import verify
        return verify.verify(self)

    def export(self, out: str | Path) -> dict:
        from gallery.store import export
        return export.export(self, out)

    def index(self, kind: str | None = None, rebuild: bool = False, **params: Any):
        from gallery import index
        return index.store_index(self, kind=kind, rebuild=rebuild, **params)

    def search(self, queries: np.ndarray, k: int = 10, **kwargs: Any):
        from gallery import search
        return search.search(self, queries, k=k, **kwargs)

    def info(self) -> dict:
        from gallery.store import items
        return {
            "path": str(self.path), "schema_version": self.schema_version, "dim": self.dim,
            "dtype": self.dtype, "created": str(self.h5.attrs["created"]),
            "active_model": self.active_model, "aliases": self.aliases,
            "rows": self.committed, "live": self.count(),
            "models": [m.summary() for m in self.models()],
            "per_model": items.model_counts(self),
        }
