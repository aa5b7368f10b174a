"""The store's generation: one opaque value that changes whenever anything a reader
serves from changes (rows enrolled or removed, the query model, aliases, thresholds,
a backfill published, a migration).

Long-lived readers (the HTTP service, gallery/serve) poll it to know when to reload,
without knowing how a store is laid out. Compare values for equality only. It is the
manifest's version: every commit (manifest.py) bumps it, nothing else does. `stamp` is
the cheaper check a reader makes before every search (`gallery.open(path, live=True)`).
"""

from __future__ import annotations

import os
from pathlib import Path

from gallery.errors import BadInput
from gallery.store import manifest as mf
from gallery.store.core import Store, check_store_path


def generation(path: str | Path) -> str:
    """The current generation of the store at `path` (BadInput if it cannot be opened):
    one small file read, no data file opened."""
    path = Path(path)
    check_store_path(path)
    return str(int(mf.load(path)["version"]))


def current(store: Store) -> str:
    """The generation as seen by an open handle (its view, not re-read from disk)."""
    return str(store.manifest_version)


def stamp(path: str | Path) -> tuple[int, int, int, int]:
    """One os.stat of the manifest (no read): differs after every commit, which renames a
    new file over it (a new inode while the old one is still held, so never the value a
    reader saw just before), and its times and size change too. Equal stamps: no commit."""
    path = Path(path)
    try:
        st = os.stat(path / mf.NAME)
    except OSError as exc:
        check_store_path(path)  # the refusal that names the problem (not a store, a v2 file...)
        if isinstance(exc, FileNotFoundError):  # the same words as opening the store
            raise mf.missing(path) from None
        raise BadInput(f"cannot read {path}/{mf.NAME}: {exc.strerror}") from None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
