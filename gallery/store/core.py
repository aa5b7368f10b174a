"""The Store: a gallery directory of immutable files under one atomically replaced manifest.

Layout: schema.py; the commit protocol: manifest.py; the data files: segments.py. A
reader loads one manifest and opens the files it lists (a consistent snapshot, whatever
writers do next); a writer holds the lock (locking.py: an flock on the directory itself),
writes new files and commits the next manifest. Several changes made inside
`with store.transaction():` become one commit (an upgrade registers a model, stores
thresholds, records lineage and switches the query model atomically).

Model records are the ModelRecords mixin (models.py); rows (enrol, remove) items.py;
reads reads.py; integrity verify.py; compaction compact.py; export export.py. The
rollout's storage (overlay, lineage) goes through `Store.manifest` and the small
helpers here, never through files of its own.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from gallery import validate
from gallery.errors import BadInput, GalleryError
from gallery.limits import check_dim
from gallery.store import compact, export, idindex, items, reads, schema, segments, verify
from gallery.store import manifest as mf
from gallery.store.locking import WriterLock
from gallery.store.migrations import backup_path, legacy_schema
from gallery.store.models import ModelRecords, with_stored_path
from gallery.store.schema import EMPTY_CHAIN, ModelInfo  # noqa: F401  (EMPTY_CHAIN: older callers)

log = logging.getLogger(__name__)

Progress = Callable[[int], None] | None
PIN_RETRIES = 20


def _refuse_file(path: Path) -> None:
    """Why a file is not an openable store: not HDF5, cut short, not a gallery, or a
    single-file (schema v1/v2) store that `gallery migrate` converts."""

    version = legacy_schema(path)  # BadInput for an unreadable or foreign file
    if version > schema.SCHEMA_VERSION:
        raise BadInput(f"store {path} has schema v{version}, newer than this gallery understands "
                       f"(v{schema.SCHEMA_VERSION}); upgrade gallery")
    raise BadInput(f"store {path} is a single-file store (schema v{version}); run `gallery migrate {path}` "
                   f"to convert it to the crash-safe directory layout (schema v{schema.SCHEMA_VERSION})")


def _build_dir(path: Path, pid: int) -> Path:
    """Where process `pid` builds a new store for `path` before renaming it into place."""
    return path.with_name(f".{path.name}.{pid}.creating")


def _remove_dead_builds(path: Path) -> None:
    """Remove the build directories of creations of `path` whose process died before the
    rename (a kill leaves its build behind; no reader ever saw it). One whose process still
    runs is left alone; so is any other name. Pids are this machine's: a creator on another
    host sharing the folder that happens to have a pid not running here loses its build, and
    its rename then fails with an error, it never leaves a half store."""
    for build in path.parent.glob(f".{glob.escape(path.name)}.*.creating"):
        pid = build.name[len(path.name) + 2: -len(".creating")]
        if pid.isdigit() and build == _build_dir(path, int(pid)) and (int(pid) == os.getpid() or not _running(int(pid))):
            shutil.rmtree(build, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by another user
    return True


def check_store_path(path: Path) -> None:
    """A clear refusal for anything that is not a store directory."""
    if path.is_dir():
        return
    if path.is_file():
        _refuse_file(path)

    if backup_path(path).exists():
        raise BadInput(f"store {path} is half-way through `gallery migrate`; run it again to finish")
    raise BadInput(f"store not found: {path}")


class Store(ModelRecords):
    """One gallery directory. Use as a context manager; mode "r" or "a"."""

    def __init__(self, path: Path, manifest: dict, lock: WriterLock | None, durable: bool, dirfd: int) -> None:
        self.path = path
        # Every file is reached through an open handle on the store directory, never its
        # name again: a store renamed (or a symlink re-pointed) while open is still this store.
        self._dirfd = dirfd
        self.dir = Path(f"/proc/self/fd/{dirfd}")
        self.manifest = manifest
        self._lock = lock
        self.durable = durable
        self._cache: dict[str, Any] = {}
        self._files = segments.Files(self.dir, path)
        self._small: dict[str, bytes] = {}  # deletion and plan files' bytes, read when pinned
        self._tx_depth = 0
        self._tx_dirty = False
        self._base = int(manifest["version"])  # the manifest this handle's changes build on
        self._index()

    # ---- lifecycle -------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, model: ModelInfo, dtype: str = "float32",
               durable: bool | None = None, fill: Callable[["Store"], Any] | None = None) -> "Store":
        """Create a new store directory with its first model (active for queries); returns a writer.

        The store is built under a temporary name and renamed into place once complete, so
        it appears whole or not at all. `fill(writer)` (e.g. `import-dlib`'s enrolment) runs
        on it before the rename: a process killed at any point leaves no store at `path`,
        and running the same creation again is never refused as "already exists"."""
        path = Path(path)
        durable = mf.durable_default() if durable is None else durable
        if path.exists() or path.is_symlink():
            raise BadInput(f"store already exists: {path}")
        if dtype not in schema.DTYPES:
            raise BadInput(f"embedding dtype {dtype!r} not one of {schema.DTYPES}")
        check_dim(model.dim, f"store {path}")
        schema.check_version_name(model.version)
        _remove_dead_builds(path)
        tmp = _build_dir(path, os.getpid())
        try:
            tmp.mkdir()
        except OSError as exc:
            raise BadInput(f"cannot write store {path}: {exc.strerror} ({tmp})") from None
        try:
            # Complete before it appears: built under a temporary name, renamed into place.
            first = {
                "format": schema.FORMAT, "schema_version": schema.SCHEMA_VERSION, "version": 0,
                # microseconds: `created` tells stores apart (an engine view names its store by
                # it); two stores made in the same second had the same identity
                "created": schema.now_iso("microseconds"), "dim": model.dim, "dtype": dtype,
                "active_model": model.version, "aliases": {}, "models": {model.version: with_stored_path(path, model).to_attrs()},
                "parents": {}, "segments": [], "batches": [], "committed": 0, "chain": EMPTY_CHAIN,
                "deletions": [], "removed": 0, "overlays": {}, "next_file": 1,
                "history": [{"at": schema.now_iso(), "pid": os.getpid(), "event": "init", "model": model.version,
                             "dim": model.dim}],  # in the first commit: a store never lacks its init record
            }
            mf.commit(tmp, first, durable)
            (tmp / "LOCK").touch()
            if fill is not None:
                with cls.open(tmp, "a", durable=durable) as building:
                    fill(building)
            if path.exists():
                raise BadInput(f"store already exists: {path}")
            os.rename(tmp, path)
            mf.fsync_path(path.parent if str(path.parent) else Path("."), durable)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path, "a", durable=durable)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", durable: bool | None = None) -> "Store":
        """Open for reading ("r", never blocked by writers) or writing ("a", takes the lock)."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        check_store_path(path)
        durable = mf.durable_default() if durable is None else durable
        lock = WriterLock(path).acquire() if mode == "a" else None
        try:
            store = cls._pinned(path, lock, durable)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if lock is not None:
            try:
                store._refuse_damaged()
                store._collect_garbage()
            except BaseException:
                store.close()  # releases the lock too
                raise
        return store

    @classmethod
    def _pinned(cls, path: Path, lock: WriterLock | None, durable: bool) -> "Store":
        """Load the manifest and open every HDF5 file it lists. A file retired by a compaction
        that committed in between is gone: load the newer manifest and try again."""
        try:
            dirfd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise BadInput(f"cannot open store {path}: {exc.strerror}") from None
        directory = Path(f"/proc/self/fd/{dirfd}")
        try:
            for _ in range(PIN_RETRIES):
                manifest = mf.load(directory, path)
                _check_format(manifest, path)
                store = cls(path, manifest, lock, durable, dirfd)
                try:
                    store._pin()
                    return store
                except FileNotFoundError:
                    store._files.close()
                    if lock is not None:  # the writer's own manifest cannot move: a file is really missing
                        break
                    time.sleep(0.01)
            return cls(path, mf.load(directory, path), lock, durable, dirfd)  # verify names the missing file
        except BaseException:
            os.close(dirfd)
            raise

    def _pin(self) -> None:
        """Hold every listed file: HDF5 files open, small files read. A compaction may unlink
        them once a newer manifest is committed; this snapshot keeps reading what it pinned."""
        self._damaged: list[str] = []
        for name in self.data_files(h5_only=True):
            try:
                self._files.get(name)
            except segments.Damaged:
                self._damaged.append(name)  # reported by verify; reads of it refuse
        small = [d["file"] for d in self.manifest["deletions"]]
        small += [o[k]["file"] for o in self.manifest["overlays"].values() for k in schema.PLAN_KEYS if o.get(k)]
        for name in small:
            if name not in self._small:
                try:
                    self._small[name] = (self.dir / name).read_bytes()
                except FileNotFoundError:
                    raise
                except OSError:
                    pass  # unreadable: read_array names it when used

    def _refuse_damaged(self) -> None:
        """A writer never commits on top of a damaged store: the next commit would be
        acknowledged, then the command would fail on the damage it reads (or a later one
        would), and a failed command must leave the store as it was. Sizes and HDF5 headers
        only (cheap); `verify` does the full checksums."""
        damaged = sorted(set(self._damaged) | {name for name, _ in verify.file_problems(self, quick=True)})
        if damaged:
            raise segments.Damaged(f"store file {self.path / damaged[0]} is damaged"
                                   + (f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else "")
                                   + "; nothing was changed; run `gallery verify`")

    def close(self) -> None:
        try:
            self._files.close()
            if self._dirfd is not None:
                os.close(self._dirfd)
                self._dirfd = None
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
        """Drop cached columns (after a write)."""
        self._cache.clear()

    # ---- the manifest --------------------------------------------------------------
    def _index(self) -> None:
        segs = self.manifest["segments"]
        self._starts = np.array([s["start"] for s in segs], np.int64)
        self._stops = np.array([s["start"] + s["rows"] for s in segs], np.int64)

    def data_files(self, h5_only: bool = False) -> list[str]:
        """Every data file the manifest lists."""
        m = self.manifest
        names = [s["file"] for s in m["segments"]]
        for over in m["overlays"].values():
            names += [f["file"] for f in over["files"]]
        if not h5_only:
            names += [d["file"] for d in m["deletions"]]
            names += [o[k]["file"] for o in m["overlays"].values() for k in schema.PLAN_KEYS if o.get(k)]
        return names

    def file_records(self) -> list[tuple[str, dict]]:
        """(kind, manifest record) of every listed file (verify)."""
        m = self.manifest
        out = [("segment", s) for s in m["segments"]] + [("deletions", d) for d in m["deletions"]]
        for version, over in sorted(m["overlays"].items()):
            out += [(f"{f.get('provenance', 'backfill')} overlay of {version}", f) for f in over["files"]]
            for key, kind in zip(schema.PLAN_KEYS, ("backfill", "adapter")):
                if over.get(key):
                    out.append((f"{kind} plan of {version}", over[key]))
        return out

    def _new_file(self, kind: str) -> str:
        """A never-used file name (the counter lives in the manifest being built)."""
        number = int(self.manifest["next_file"])
        self.manifest["next_file"] = number + 1
        return segments.file_name(kind, number)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes inside are committed together, once, at the end (nothing on an error)."""
        self.require_writer()
        if self._tx_depth == 0:
            self._tx_base = copy.deepcopy(self.manifest)
            self._tx_dirty = False
        self._tx_depth += 1
        try:
            yield
        except BaseException:
            self._tx_depth -= 1
            if self._tx_depth == 0:
                self.manifest = self._tx_base
                self._index()
                self.invalidate()
            raise
        self._tx_depth -= 1
        if self._tx_depth == 0 and self._tx_dirty:
            self._write_manifest()

    def commit(self) -> None:
        """Make the in-memory manifest durable (deferred to the end of a transaction)."""
        self.require_writer()
        if self._tx_depth:
            self._tx_dirty = True
            # the cached columns and views derive from the manifest that just changed: reads
            # later in the transaction must see it although its write waits for the end
            self.invalidate()
            return
        self._write_manifest()

    def _write_manifest(self) -> None:
        on_disk = mf.load(self.dir)["version"]
        if on_disk != self._base:
            raise GalleryError(f"store {self.path} changed under this writer (manifest {on_disk}, expected "
                               f"{self._base}); nothing was committed, retry")
        self.manifest["version"] = on_disk + 1
        try:
            mf.commit(self.dir, self.manifest, self.durable, self.path)
        except (OSError, GalleryError) as exc:
            self.manifest = mf.load(self.dir)
            self._index()
            self.invalidate()
            if isinstance(exc, GalleryError):  # refused for space before writing: its own line
                raise
            raise GalleryError(f"cannot commit to store {self.path}: {exc.strerror or exc}; "
                               "the previous state is kept") from None
        self._base = self.manifest["version"]
        self._index()
        self.invalidate()
        self._pin()

    def write_files(self) -> "_NewFiles":
        """Context for files being written for the next commit: removed if it fails."""
        return _NewFiles(self)

    def _collect_garbage(self) -> None:
        """Under the lock: files no manifest lists are a crashed writer's (or a retired
        compaction input a reader may still hold open: unlinking keeps its data readable)."""
        keep = set(self.data_files()) | {mf.NAME}
        for path in self.dir.iterdir():
            if segments.NAME_RE.match(path.name) and path.name not in keep or path.name == mf.TMP:
                path.unlink(missing_ok=True)

    # ---- root attributes ---------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def schema_version(self) -> int:
        return int(self.manifest["schema_version"])

    @property
    def committed(self) -> int:
        """Rows that belong to the gallery (live or tombstoned)."""
        return int(self.manifest["committed"])

    @property
    def chain(self) -> str:
        """Running checksum over every committed batch."""
        return str(self.manifest["chain"])

    @property
    def manifest_version(self) -> int:
        return int(self.manifest["version"])

    # ---- history -----------------------------------------------------------------
    def append_history(self, record: dict) -> None:
        """Append one event to the history; committed with the change it describes."""
        self.require_writer()
        self.manifest["history"].append({"at": schema.now_iso(), "pid": os.getpid(), **record})
        self.commit()

    def history(self) -> list[dict]:
        return list(self.manifest["history"])

    # ---- rows and integrity (delegated) -------------------------------------------
    # Searching a store and its index sidecar are the layers above (gallery.search,
    # gallery.index), which take a Store: the store imports nothing above it.
    def enroll(self, embeddings: np.ndarray, ids: Sequence[str], identities: Sequence[str] | None = None,
               **kwargs: Any) -> dict:
        validate.enrolment(embeddings, ids, identities)  # values no store may hold (gallery/validate.py)
        return items.enroll(self, embeddings, ids, identities, **kwargs)

    def remove(self, ids: Sequence[str]) -> dict:
        return items.remove(self, ids)

    def find_ids(self, ids: Sequence[str]) -> dict[str, int]:
        """{id: row} for those of `ids` the store holds (live or removed: ids are never reused)."""
        return idindex.find(self, ids)

    def columns(self) -> dict[str, np.ndarray]:
        return reads.columns(self)

    def values_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        return reads.values_at(self, name, rows)

    def tombstones(self) -> np.ndarray:
        """bool per committed row: removed."""
        return reads.snapshot(self)[2]

    def embeddings(self, rows: np.ndarray | None = None, version: str | None = None) -> np.ndarray:
        return reads.embeddings(self, rows, version)

    def content_checksum(self) -> str:
        return reads.content_checksum(self)

    def count(self) -> int:
        """Live (not tombstoned) rows."""
        return int((~self.tombstones()).sum())

    def verify(self, quick: bool = False) -> dict:
        return verify.verify(self, quick=quick)

    def compact(self, **kwargs: Any) -> dict:
        return compact.compact(self, **kwargs)

    def export(self, out: str | Path, progress: Any = None, on_total: Any = None) -> dict:
        return export.export(self, out, progress, on_total)

    def info(self) -> dict:
        return {
            "path": str(self.path), "schema_version": self.schema_version, "dim": self.dim,
            "dtype": self.dtype, "created": str(self.manifest["created"]),
            "active_model": self.active_model, "aliases": self.aliases,
            "rows": self.committed, "live": self.count(),
            "models": [m.summary() for m in self.models()],
            "per_model": reads.model_counts(self),
            "manifest_version": self.manifest_version, "segments": len(self.manifest["segments"]),
        }


class _NewFiles:
    """Tracks the files a writer creates before its commit; on any failure they are removed
    (they were never listed, so no reader can have them) and the error says nothing was kept."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.names: list[str] = []

    def name(self, kind: str) -> str:
        name = self.store._new_file(kind)  # _NewFiles is this module's
        self.names.append(name)
        return name

    def __enter__(self) -> "_NewFiles":
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        for name in self.names:
            for path in (self.store.dir / name, self.store.dir / f"{name}.tmp"):
                path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GalleryError(f"cannot write store {self.store.path}: {exc.strerror or exc}; "
                               "nothing was committed, the previous state is kept") from None


def _check_format(manifest: dict, path: Path) -> None:
    if manifest.get("format") != schema.FORMAT:
        raise BadInput(f"{path} is not a gallery store (manifest format is not {schema.FORMAT})")
    version = int(manifest.get("schema_version", 0))
    if version > schema.SCHEMA_VERSION:
        raise BadInput(f"store {path} has schema v{version}, newer than this gallery understands "
                       f"(v{schema.SCHEMA_VERSION}); upgrade gallery")
