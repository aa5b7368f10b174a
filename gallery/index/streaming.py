"""Build a store's index without holding every vector: train on a sample, add block by block.

Peak memory is the index itself, the training sample (~40 vectors per IVF cell) and
one block of rows, so a 10M x 512 gallery (20 GB as float32) builds an 8-bit or PQ
index on a machine with far less memory. The sample is read in its own pass over
the file, so the build reads the embeddings twice; that costs seconds next to the
minutes of k-means and cell assignment.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from gallery.index.core import GalleryIndex, IndexParams, build_from, check_fits, sample_positions, train_rows
from gallery.store import ranges, spaces
from gallery.store.ranges import live_blocks

if TYPE_CHECKING:
    from gallery.store import Store

log = logging.getLogger(__name__)


def build_over_store(store: "Store", live: np.ndarray, params: IndexParams,
                     progress: Callable[[int], None] | None = None, **meta: Any) -> GalleryIndex:
    """Index the given live rows of `store` (sorted row numbers); `progress(n)` as each
    block of rows is added."""
    n, dim = int(live.size), spaces.model_dim(store)  # the query model's space
    p = params.resolved(n, dim)
    check_fits(p, n, dim, extra=min(n, ranges.BLOCK_ROWS) * dim * 4)  # one block in flight
    sample_rows = live[sample_positions(train_rows(p, n), n)]
    started = time.perf_counter()
    train = ranges.gather(store, sample_rows)
    log.info("read %d training vectors of %s in %.1f s", len(train), store.path, time.perf_counter() - started)
    return build_from(train, _logged(live_blocks(store, live), n, p.kind, progress), n, dim, params, **meta)


def _logged(blocks: Iterator[tuple[np.ndarray, np.ndarray]], n: int, kind: str,
            progress: Callable[[int], None] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    done, next_report, started = 0, n // 10, time.perf_counter()
    for vectors, rows in blocks:
        yield vectors, rows
        done += len(rows)
        if progress is not None:
            progress(len(rows))
        if done >= next_report:
            log.info("%s index: added %d / %d rows (%.0f s)", kind, done, n, time.perf_counter() - started)
            next_report += max(1, n // 10)
