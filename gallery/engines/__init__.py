"""Serving engines: keep a Milvus or Qdrant collection in sync with the store, query it.

The store stays the system of record; an engine holds one *serving view* per query model
(sync.py) behind an alias that moves only to a complete view, and `search` answers from
it with the store's open-set rule (query.py). Engines: `ENGINES` (milvus, qdrant).

    from gallery import engines
    with Store.open("g.h5", "a") as st, engines.connect("milvus", "./serve.db") as eng:
        engines.sync(st, eng)                       # incremental, resumable
        result = engines.search(eng, "g", queries)  # a gallery.search.SearchResult
"""

from __future__ import annotations

from gallery.engines import milvus, qdrant  # noqa: F401  register the engines
from gallery.engines.base import ENGINES, Engine, EngineError
from gallery.engines.query import search, serving_view
from gallery.engines.sync import cursor_key, default_alias, sync
from gallery.errors import BadInput

__all__ = ["ENGINES", "Engine", "EngineError", "connect", "parse_engine", "search", "serving_view", "sync",
           "cursor_key", "default_alias"]


def connect(kind: str, uri: str) -> Engine:
    """An engine client: kind from ENGINES; uri a server URL or a local deployment
    (Milvus: a milvus-lite `.db` file; Qdrant: a local-mode folder)."""
    return ENGINES.get(kind)(uri)


def parse_engine(text: str, store=None, alias: str | None = None) -> tuple[str, str]:
    """`--engine` -> (kind, uri): `milvus:URI` / `qdrant:URI`, or a URI a sync of this store
    used (its cursor says which engine), or a `.db` file (milvus-lite)."""
    kind, sep, rest = text.partition(":")
    if sep and kind in ENGINES and not rest.startswith("//"):
        return kind, rest
    if store is not None:
        alias = alias or default_alias(store)
        for name in ENGINES:
            if any(store.engine_cursor(cursor_key(name, text, alias, v)) is not None for v in store.model_versions()):
                return name, text
    if text.endswith(".db"):
        return "milvus", text
    raise BadInput(f"cannot tell which engine serves {text!r}: write milvus:{text} or qdrant:{text}")
