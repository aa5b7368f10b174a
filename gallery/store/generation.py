"""The store's generation: one opaque value that changes whenever anything a reader
serves from changes (rows enrolled or removed, the query model, aliases, thresholds,
a backfill published, a migration).

Long-lived readers (the HTTP service, gallery/serve) poll it to know when to reload,
without knowing how a store is laid out. Compare values for equality only. It is the
manifest's version: every commit (manifest.py) bumps it, nothing else does.
"""

from __future__ import annotations

from pathlib import Path

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
