"""Reading embeddings a contiguous block of rows at a time (index builds, exact scans).

`Store.embeddings(rows)` reads scattered rows one at a time (fine for a search's
candidates); a row range is one hyperslab read, which is what a pass over a 10M-row
gallery needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from gallery.store import spaces
from gallery.store.columns import column_range
from gallery.store.reads import with_backfills

if TYPE_CHECKING:
    from gallery.store import Store

BLOCK_ROWS = 65536  # 128 MiB of float32 at dim 512


def embeddings_between(store: "Store", lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 as float32 (tombstoned rows included), backfilled rows substituted."""
    hi = min(hi, store.committed)
    out = np.asarray(column_range(store, "embedding", lo, hi), dtype=np.float32)
    return with_backfills(store, out, np.arange(lo, hi))


def live_blocks(store: "Store", rows: np.ndarray, block_rows: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, row numbers) of the given sorted rows, one block of the file at a time."""
    rows = np.asarray(rows, dtype=np.int64)
    block_rows = block_rows or BLOCK_ROWS
    mixed = spaces.mixed(store)
    for lo in range(0, store.committed, block_rows):
        first, last = np.searchsorted(rows, [lo, lo + block_rows])
        if first == last:
            continue
        wanted = rows[first:last]
        if mixed:  # rows of several dimensions: the query model's space (spaces.py), run by run
            yield spaces.vectors(store, wanted), wanted
            continue
        block = embeddings_between(store, int(wanted[0]), int(wanted[-1]) + 1)
        yield block[wanted - wanted[0]], wanted



def gather(store: "Store", rows: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The given sorted rows' vectors in the query model's space as one float32 array, read
    one block of the file at a time (`progress(n)` after each)."""
    out = np.empty((rows.size, spaces.model_dim(store)), np.float32)
    at = 0
    for vectors, _ in live_blocks(store, rows):
        out[at : at + len(vectors)] = vectors
        at += len(vectors)
        if progress is not None:
            progress(len(vectors))
    return out
