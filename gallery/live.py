"""A long-lived reader that follows the store: upgrades, rollbacks, thresholds, enrolments.

An HDF5 handle opened read-only keeps the file's metadata it has read: a `Store.open(path)`
held across another process's `gallery rollback` goes on answering with the old query
model. `LiveStore` makes one cheap check per search, an `os.stat` of the store file
(inode, size, modification times; no HDF5 work): when it changed, the store is reopened and
its generation (gallery.store.generation) compared; a new generation means a fresh handle,
so the query model, its thresholds, the index and the rows are all re-read together.
One LiveStore per thread (a reload closes the handle the previous search used); the HTTP
service has its own switcher (gallery/serve) for many threads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gallery.encoder import load_registered
from gallery.ingest import embed_queries
from gallery.search import search
from gallery.store import Store
from gallery.store.generation import current

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LiveStore:
    """Read-only view of the store at `path` that is never older than its last committed state."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._store: Store | None = None
        self._signature: tuple | None = None
        self.generation: str | None = None
        self.reloads = 0  # generations loaded after the first
        self.refresh()

    def refresh(self) -> bool:
        """The per-search check (one os.stat); True when a new generation was loaded."""
        signature = _signature(self.path)
        if signature == self._signature and self._store is not None:
            return False
        # HDF5 shares one open file (and its cached metadata) between all handles of a process:
        # the old handle must be closed before the reopen can see another process's commit.
        previous = self.generation
        self.close()
        self._store = Store.open(self.path, "r")
        self._signature, self.generation = signature, current(self._store)
        if previous is None or self.generation == previous:
            return False  # the first load, or the file was touched but nothing a reader serves changed
        self.reloads += 1
        log.info("%s: generation %s, query model %s", self.path, self.generation, self._store.active_model)
        return True

    @property
    def store(self) -> Store:
        self.refresh()
        assert self._store is not None
        return self._store

    def search(self, queries: np.ndarray, **kwargs: Any):
        """gallery.search.search against the store's current committed state."""
        return search(self.store, queries, **kwargs)

    def search_images(self, paths: Sequence[str | Path], **kwargs: Any):
        """Embed query images with the current query model (per-item errors: gallery.ingest) and search."""
        st = self.store
        encoder = load_registered(st.model(kwargs.get("query_version")), st.path)
        queries, names, errors = embed_queries(encoder, paths)
        return self.search(queries, **kwargs), names, errors

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "LiveStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
