"""The service's writes: ordinary store writers that hold the lock only for their commit.

Everything slow (decoding, encoding, validation of the request) happens before the lock
is taken. Meeting another writer's lock (a CLI upgrade, backfill, another enrol), a
write waits up to `wait_seconds`, then gives up with StoreLocked (HTTP 503 +
Retry-After). A response is sent only after the commit returned, which flushed the
rows to the file: a service killed at any point loses no acknowledged item.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from gallery.errors import StoreLocked
from gallery.index import refresh_after_write
from gallery.serve.state import STORE_HANDLES
from gallery.store import Store

RETRY_SECONDS = 0.05


class ModelSwitched(StoreLocked):
    """Images were encoded with a query model the store no longer has active: retry."""


@contextmanager
def writer(path: Path, wait_seconds: float) -> Iterator[Store]:
    """The store open for writing, waiting at most `wait_seconds` in all for the lock."""
    deadline = time.monotonic() + wait_seconds
    # Also queues this process's writers, instead of each spinning on the flock.
    if not STORE_HANDLES.acquire(timeout=max(wait_seconds, 0)):
        raise StoreLocked(f"store {path} is busy in this service (another write or a reload); retry")
    try:
        while True:
            try:
                st = Store.open(path, "a")
                break
            except StoreLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_SECONDS)
        with st:
            yield st
    finally:
        STORE_HANDLES.release()


def enroll(path: Path, embeddings: np.ndarray, ids: Sequence[str], identities: Sequence[str] | None,
           model_version: str | None, wait_seconds: float, encoded_by: str | None = None,
           content_hashes: Sequence[str] | None = None) -> dict:
    """Commit rows. `encoded_by`: the version this service encoded images with; refused if
    the store's active model moved on meanwhile (rows must be labelled with their model)."""
    with writer(path, wait_seconds) as st:
        if encoded_by is not None and st.active_model != encoded_by:
            raise ModelSwitched(f"the query model changed to {st.active_model} while the images "
                                f"were encoded with {encoded_by}; send them again")
        result = st.enroll(embeddings, ids, identities, model_version=model_version, content_hashes=content_hashes)
        result["index"] = refresh_after_write(st)  # the sidecar the next snapshot loads: caught up here
        return result


def remove(path: Path, ids: Sequence[str], wait_seconds: float) -> dict:
    with writer(path, wait_seconds) as st:
        result = st.remove(ids)
        result["index"] = refresh_after_write(st)
        return result
