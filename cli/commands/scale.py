"""Scale-out commands: search-shards, search-gpu, export-serving (an alias of `sync`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from cli.common import JSON_FLAG, STORE_ARG, KIND_CHOICES, console, emit_json, handle_errors, render_table
from gallery.errors import BadInput

JSON = JSON_FLAG
QUERIES = typer.Option(..., "--embeddings", help="Query embeddings .npy or .h5.")


def register(app: typer.Typer) -> None:
    app.command("search-shards")(search_shards_cmd)
    app.command("search-gpu")(search_gpu_cmd)
    app.command("export-serving")(export_serving_cmd)


def _render(title: str, names: list[str], ids, identities, scores, extra=None) -> None:
    rows = []
    for q, name in enumerate(names):
        for rank in range(ids.shape[1]):
            if ids[q, rank] == "":
                continue
            rows.append((name if rank == 0 else "", rank + 1, identities[q, rank], ids[q, rank],
                         float(scores[q, rank]), extra[q, rank] if extra is not None else None))
    render_table(title, ("query", "rank", "identity", "item", "score", "where"), rows)


@handle_errors
def search_shards_cmd(
    shards: List[Path] = typer.Argument(..., help="Shard store files (same model)."),
    embeddings: Path = QUERIES,
    k: int = typer.Option(10, "--top-k", "-k", "--k", help="Hits per query."),
    index: Optional[str] = typer.Option(None, "--index", help=f"{KIND_CHOICES} (per shard)."),
    as_json: bool = JSON,
) -> None:
    """k nearest items over a gallery sharded across stores (faiss IndexShards)."""
    from gallery.arrayfiles import read_embedding_file
    from gallery.shards import ShardedGallery

    queries, names = read_embedding_file(embeddings, queries=True)[:2]
    with ShardedGallery(shards, kind=index) as gallery:
        res = gallery.search(queries, k=k)
    if as_json:
        emit_json([{"query": n, "hits": [{"item_id": str(res.ids[q, j]), "identity": str(res.identities[q, j]),
                                          "score": float(res.scores[q, j]), "shard": str(shards[res.shards[q, j]]),
                                          "row": int(res.rows[q, j]), "model_version": str(res.models[q, j])}
                                         for j in range(res.ids.shape[1]) if res.rows[q, j] >= 0]}
                   for q, n in enumerate(names)])
        return
    where = [[f"shard {s}" if s >= 0 else "" for s in row] for row in res.shards]
    _render(f"search over {len(shards)} shards", names, res.ids, res.identities, res.scores,
            extra=np.array(where, dtype=object))


@handle_errors
def search_gpu_cmd(
    store: Path = STORE_ARG,
    embeddings: Path = QUERIES,
    k: int = typer.Option(10, "--top-k", "-k", "--k", help="Hits per query."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Reject hits below this cosine score."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 (candidates, float32 re-score) or float32."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda if available)."),
    require_gpu: bool = typer.Option(False, "--require-gpu", help="Fail unless CUDA is available."),
    as_json: bool = JSON,
) -> None:
    """Exact search with torch (chunked matmul + top-k), on the GPU when there is one."""
    from gallery import gpu_search
    from gallery.arrayfiles import read_embedding_file
    from gallery.store import Store

    try:
        import torch  # noqa: F401
    except ImportError:
        raise BadInput("search-gpu needs torch (pip install '.[train]' or a CUDA build)") from None
    if require_gpu and not gpu_search.available():
        raise BadInput("--require-gpu: torch sees no CUDA device")
    queries, names = read_embedding_file(embeddings, queries=True)[:2]
    with Store.open(store) as st:
        result = gpu_search.search_store(st, queries, k=k, threshold=threshold, device=device, dtype=dtype)
    records = result.to_records(names)
    if as_json:
        emit_json(records)
        return
    _render(f"exact search {store} ({device or ('cuda' if gpu_search.available() else 'cpu')}, {dtype})",
            names, result.ids, result.identities, result.scores, extra=result.models)


@handle_errors
def export_serving_cmd(
    store: Path = STORE_ARG,
    qdrant: Optional[str] = typer.Option(None, "--qdrant", help="Qdrant URL (http...) or a local folder."),
    collection: Optional[str] = typer.Option(None, "--collection", help="Serving alias (default: store name)."),
    milvus: Optional[str] = typer.Option(None, "--milvus", help="Milvus URL or a milvus-lite .db file."),
    as_json: bool = JSON,
) -> None:
    """Alias of `gallery sync qdrant|milvus STORE --uri URI` (kept for scripts; the one-shot
    export and its Milvus bulk-insert files were replaced by the incremental sync)."""
    from cli.commands.engines import sync_store

    if (qdrant is None) == (milvus is None):
        raise BadInput("give either --qdrant URL|FOLDER or --milvus URL|FILE.db")
    kind, uri = ("qdrant", qdrant) if qdrant is not None else ("milvus", milvus)
    result = sync_store(kind, store, uri, collection, batch=1000, index="HNSW")
    if as_json:
        emit_json(result)
    else:
        console.print(f"synced {store} -> {kind} {result['collection']} ({result['upserted']} rows sent)")
