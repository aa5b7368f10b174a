"""Serving engines: `gallery sync milvus|qdrant STORE --uri URI`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import STORE_ARG, console, emit_json, handle_errors


def register(app: typer.Typer) -> None:
    app.command("sync")(sync_cmd)


def sync_store(kind: str, store: Path, uri: str, collection: Optional[str], batch: int, index: str) -> dict:
    """Open the store for writing and the engine, sync, close both (shared with export-serving)."""
    from gallery import engines
    from gallery.store import Store

    with engines.connect(kind, uri) as engine:  # an unknown or unreachable engine: the store is never opened
        with Store.open(store, "a") as st:
            return engines.sync(st, engine, collection=collection, batch=batch, index=index)


@handle_errors
def sync_cmd(
    engine: str = typer.Argument(..., help="milvus | qdrant"),
    store: Path = STORE_ARG,
    uri: str = typer.Option(..., "--uri", help="Server URL (http://host:19530, http://host:6333), or a local "
                            "deployment: a milvus-lite .db file, a Qdrant local-mode folder."),
    collection: Optional[str] = typer.Option(None, "--collection", help="Serving alias readers query "
                                             "(default: the store's file name); views are <alias>__<model>."),
    batch: int = typer.Option(1000, "--batch", help="Rows per engine request (the cursor is saved after each)."),
    index: str = typer.Option("HNSW", "--index", help="Milvus vector index of a new view: FLAT (exact), "
                              "IVF_FLAT, IVF_SQ8, HNSW, HNSW_SQ, AUTOINDEX. Qdrant: its own HNSW."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Bring an engine's serving view of the query model up to date (incremental, resumable)
    and point the alias at it once complete."""
    result = sync_store(engine, store, uri, collection, batch, index)
    if as_json:
        emit_json(result)
        return
    moved = f", alias {result['alias']} -> {result['collection']}" if result["switched"] else ""
    console.print(f"{result['engine']} {result['collection']}: {result['upserted']} rows sent, "
                  f"{result['deleted']} removed, {result['batches']} batches{moved}")
