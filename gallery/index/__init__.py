"""faiss index over a store: inner product on L2-normalised vectors.

The index is a derived artifact, kept in the store directory as a sidecar (a faiss file
and sidecar.index.json: what it was built from: the store's content checksum, committed
row count, live count, kind and parameters). When the store's checksum moves on
(an enrol or a removal) the index is stale: appended rows are added to it, anything
else rebuilds it on the next search. faiss ids are store row numbers, and
tombstoned rows are never added.

- core.py: kinds, parameters and their size-dependent defaults, memory estimate, build.
- streaming.py: building from a store chunk by chunk (train on a sample, then add),
  so peak memory is the index plus one chunk, never every vector as float32.
- sidecar.py: the sidecar's life cycle (fresh / stale / extend / rebuild), and the index
  each open store handle searches (`store_index`).
- groups.py: flat indexes of the other row groups of a store of several dimensions.
"""

from gallery.index.core import (FLAT_MAX, IVF_MAX, IVFSQ8_MAX, KINDS, GalleryIndex, IndexParams, build,
                                default_kind, estimate_bytes, train_rows)
from gallery.index.groups import group_index
from gallery.index.sidecar import (check_sidecar, forget, refresh_after_write, sidecar_path, sidecar_state,
                                   store_index)

__all__ = ["FLAT_MAX", "IVF_MAX", "IVFSQ8_MAX", "KINDS", "GalleryIndex", "IndexParams", "build",
           "default_kind", "estimate_bytes", "train_rows", "sidecar_path",
           "sidecar_state", "store_index", "refresh_after_write", "forget", "check_sidecar", "group_index"]
