"""Snapshot: everything one store generation serves from, loaded once and held in memory.

A request takes the current Snapshot once and uses only it, so a switch to a new
generation never changes the state under a request in flight. Requests never touch the
store file: the index, the hit metadata columns, tombstones, thresholds and the query
encoder are all in memory, so a writer (another process upgrading or enrolling) can
never make a search fail or see half a commit.

A Snapshot offers the read-only surface `gallery.search.search` uses of a Store
(`dim`, `active_model`, `resolve_version`, `thresholds`, `index`, `tombstones`,
`values_at`), so the service answers with the library's own search code: the same
results as an in-process `search` on the same store.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gallery.errors import BadInput
from gallery.index import GalleryIndex, store_index
from gallery.store import Store, generation, spaces
from gallery.store.generation import current as generation_of

log = logging.getLogger(__name__)

HIT_COLUMNS = ("id", "identity", "model")

# HDF5 refuses to open a file for writing while the same process holds it open for
# reading ("unable to synchronously open file"), so the switcher's reads and the write
# routes' commits in this process take turns on this lock (other processes are not
# affected: they have their own HDF5 library state).
STORE_HANDLES = threading.Lock()


class GenerationMoved(Exception):
    """The store changed while a snapshot was being read: read it again."""


@dataclass(frozen=True)
class Content:
    """The part of a snapshot that depends on the rows only (an upgrade or rollback
    reuses it: same index, same columns)."""

    checksum: str
    index: GalleryIndex
    columns: dict[str, np.ndarray]
    deleted: np.ndarray


@dataclass(frozen=True)
class Snapshot:
    generation: str
    path: Path
    dim: int
    active_model: str
    aliases: dict[str, str]
    models: dict[str, dict]                      # version -> ModelInfo.summary()
    table: dict[str, dict[str, float]]           # query version -> {gallery version: threshold}
    content: Content
    info: dict
    encoder: Any = None                          # the active model's, None without one
    encoder_error: str | None = None             # why image queries cannot be served
    loaded_at: float = field(default_factory=time.time)

    # ---- what gallery.search.search reads of a store -----------------------------------
    def resolve_version(self, name: str) -> str:
        if name in self.models:
            return name
        if name in self.aliases:
            return self.aliases[name]
        valid = ", ".join(sorted(self.models) + sorted(self.aliases))
        raise BadInput(f"unknown model version {name!r}; valid: {valid}")

    def thresholds(self, query_version: str | None = None) -> dict[str, float]:
        return dict(self.table[self.resolve_version(query_version or self.active_model)])

    def index(self, kind: str | None = None) -> GalleryIndex:
        if kind not in (None, self.content.index.kind):
            raise BadInput(f"this service serves a {self.content.index.kind} index, not {kind}")
        return self.content.index

    def tombstones(self) -> np.ndarray:
        return self.content.deleted

    def values_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.content.columns[name][np.asarray(rows, dtype=np.int64)]

    # ---- what the service reports -----------------------------------------------------
    @property
    def live(self) -> int:
        return int(self.info["live"])

    def describe(self) -> dict:
        index = self.content.index
        return {**self.info, "generation": self.generation, "loaded_at": self.loaded_at,
                "index": {"kind": index.kind, "count": index.count, "params": index.meta.get("params")},
                "image_queries": self.encoder is not None,
                "image_queries_unavailable": self.encoder_error}


EncoderLoader = Callable[[Store, str], Any]


def load_snapshot(path: Path, previous: Snapshot | None = None,
                  encoder_for: EncoderLoader | None = None) -> Snapshot:
    """Read one consistent generation of the store. Rows, index and columns are reused
    from `previous` when its content is unchanged (model switches, thresholds, aliases).
    Raises GenerationMoved when a writer committed while it was being read."""
    with Store.open(path, "r") as st:
        gen = generation_of(st)
        checksum = st.content_checksum()
        if previous is not None and previous.content.checksum == checksum:
            content = previous.content
        else:
            content = _read_content(st, checksum)
        models = {m.version: m.summary() for m in st.models()}
        table = {v: st.thresholds(v) for v in models}
        # the query model's own dimension (a store can hold several: its index covers that space)
        active, dim, info = st.active_model, spaces.model_dim(st), st.info()
        encoder, error = None, None
        if encoder_for is not None:
            try:
                encoder = encoder_for(st, active)
            except BadInput as exc:  # embedding-only model, file moved: embedding queries still work
                error = str(exc)
    if generation(path) != gen:
        raise GenerationMoved(gen)
    return Snapshot(generation=gen, path=Path(path), dim=dim, active_model=active,
                    aliases=info["aliases"], models=models,
                    table=table, content=content, info=info, encoder=encoder, encoder_error=error)


def _read_content(st: Store, checksum: str) -> Content:
    index = store_index(st)  # the fresh sidecar; a stale one is caught up or rebuilt (a sidecar write)
    columns = st.columns()
    hit_columns = {name: np.asarray(columns[name]) for name in HIT_COLUMNS}
    deleted = np.asarray(columns["deleted"], dtype=bool)
    if st.content_checksum() != checksum:
        raise GenerationMoved(checksum)
    return Content(checksum=checksum, index=index, columns=hit_columns, deleted=deleted)
