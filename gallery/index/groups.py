"""Flat indexes of a store's row groups other than the query model's own sidecar (a store of
several dimensions, gallery/store/spaces.py): another model's direct rows, or the rows a
model compares through its old-space output. Exact inner product, built in memory from
the rows' vectors and kept for the open store handle while its manifest stays the same.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Callable

import numpy as np

from gallery.index.core import GalleryIndex, IndexParams, build
from gallery.store.ranges import BLOCK_ROWS

if TYPE_CHECKING:
    from gallery.store import Store


# per open store handle (as sidecar.py keeps the sidecar's): group key -> (manifest version, index)
_IN_USE: "weakref.WeakKeyDictionary[Store, dict[tuple, tuple[int, GalleryIndex]]]" = weakref.WeakKeyDictionary()


def group_index(store: "Store", key: tuple, rows: np.ndarray,
                read: Callable[[np.ndarray], np.ndarray]) -> GalleryIndex:
    """A flat index of `rows` (sorted) whose vectors `read(rows)` gives, block by block."""
    held = _IN_USE.setdefault(store, {})
    version, index = held.get(key, (None, None))
    if index is None or version != store.manifest_version:
        vectors = np.concatenate([read(rows[lo : lo + BLOCK_ROWS]) for lo in range(0, rows.size, BLOCK_ROWS)])
        index = build(vectors, rows, IndexParams(kind="flat"), group=list(map(str, key)), dead=0)
        held[key] = (store.manifest_version, index)
    return index
