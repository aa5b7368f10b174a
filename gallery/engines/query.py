"""Searching a serving view through its alias: the store's own decisions, from the engine.

The alias is resolved to its collection first, and the view record (query model,
thresholds, versions) and the hits are both read from that collection, so a reader
racing an alias switch gets one whole view, never the record of one and rows of another.
The hits become a `gallery.search.SearchResult` with the thresholds the store's search
would apply, so the open-set decision (`best`, `rejected`, `match`) is the store's code.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from gallery.engines.base import VIEW_FORMAT, Engine
from gallery.errors import BadInput
from gallery.search import SearchResult, _thresholds, prepare_queries

if TYPE_CHECKING:
    from gallery.store import Store

log = logging.getLogger(__name__)


class _ViewThresholds:
    """The view record's thresholds, in the shape gallery.search reads a store's."""

    def __init__(self, record: dict) -> None:
        self.record = record

    def thresholds(self, version: str) -> dict[str, float]:
        return dict(self.record["thresholds"]) if version == self.record["query_model"] else {}


def serving_view(engine: Engine, alias: str) -> tuple[str, dict]:
    """(collection the alias names, its view record); a plain collection name works too."""
    target = engine.alias_target(alias)
    if target is None:
        if not engine.exists(alias):
            raise engine.fail("search", f"no alias or collection {alias!r} (run `gallery sync` first)")
        target = alias
    record = engine.meta(target)
    if not record or record.get("format") != VIEW_FORMAT:
        raise engine.fail("search", f"collection {target!r} is not a complete gallery serving view")
    return target, record


def search(engine: Engine, alias: str, queries: np.ndarray, k: int = 10, threshold: float | None = None,
           store: "Store | None" = None, params: dict | None = None,
           accept_uncalibrated: bool = False) -> SearchResult:
    """k nearest live rows per query from the engine's serving view, with the store's
    open-set rule and the view's thresholds (`threshold` and `accept_uncalibrated` as in
    gallery.search.search)."""
    if k < 1:
        raise BadInput(f"k must be >= 1, got {k}")
    if threshold is not None and not np.isfinite(threshold):
        raise BadInput(f"threshold must be finite, got {threshold}")
    target, record = serving_view(engine, alias)
    if store is not None:  # queries embedded by the store's query model must meet that model's view
        if store.dim != record["dim"]:
            raise engine.fail("search", f"collection {target!r} has dimension {record['dim']}, the store {store.dim}")
        if store.active_model != record["query_model"]:
            raise engine.fail("search", f"collection {target!r} serves query model {record['query_model']}, the "
                              f"store's is {store.active_model} (run `gallery sync`)")
        if store.content_checksum() != record.get("checksum"):
            log.warning("%s collection %s is behind the store %s (run `gallery sync`)", engine.name, target,
                        store.path)
    q = prepare_queries(queries, int(record["dim"]))
    hits = engine.search(target, q, k, list(record["versions"]), params)
    version = record["query_model"]
    return SearchResult(query_model=version, scores=hits.scores, rows=hits.rows, ids=hits.ids.astype(str),
                        identities=hits.identities.astype(str), models=hits.models.astype(str),
                        thresholds=_thresholds(_ViewThresholds(record), version, hits.models.astype(str),
                                               threshold), accept_uncalibrated=accept_uncalibrated)
