"""The store's generation: one opaque value that changes whenever anything a reader
serves from changes (rows enrolled or removed, the query model, aliases, thresholds,
a backfill published, a migration).

Long-lived readers (the HTTP service, gallery/serve) poll it to know when to reload,
without knowing how a store is laid out. Compare values for equality only. Today it is
derived from the file's commit counters and its append-only history (every writer
command records an event there after its commit); a manifest-based store can return
its manifest version instead without changing callers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from gallery.store import bytelog
from gallery.store.core import Store


def generation(path: str | Path) -> str:
    """The current generation of the store at `path` (BadInput if it cannot be opened)."""
    with Store.open(path, "r") as st:
        return current(st)


def current(store: Store) -> str:
    """The generation as seen by an open handle (its view, not re-read from disk)."""
    attrs, items = store.h5.attrs, store.h5["items"].attrs
    events = bytelog.count(store.h5["history"])
    digest = hashlib.sha256("\0".join(str(v) for v in (
        items["committed"], store.chain, items.get("removed", 0), attrs["active_model"],
        attrs.get("aliases", "{}"), attrs["schema_version"])).encode()).hexdigest()[:16]
    return f"{events}-{digest}"
