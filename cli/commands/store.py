"""Gallery store commands: init, enroll, remove, info, verify, search, migrate, reindex, compact.

Each parses its options, calls one method of gallery.Gallery (or, for `migrate`, which
converts a file no Gallery can open yet, gallery.store.migrations) and renders the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import gallery
from cli.commands.threshold import warn_uncalibrated
from cli.common import (DEFAULTS_HELP, DETECT, DETECTOR, JSON_FLAG, KIND_CHOICES, STORE_ARG, STORE_OPTION, console,
                        emit, emit_json, err_console, handle_errors, progress_bar, providers_list, render_table,
                        split_store)
from gallery.errors import BadInput

JSON = JSON_FLAG
REQUIRE_GPU = typer.Option(False, "--require-gpu", help="Fail unless CUDA is the active provider.")
ON_ERROR = typer.Option("fail", "--on-error", help="An unreadable image or one without a face: fail (nothing "
                        "written) or skip it (listed under errors).")
LANDMARKS = typer.Option(None, "--landmarks", help="Face photos: 5-point landmarks CSV/JSON per image.")


def register(app: typer.Typer) -> None:
    for name, func in (("init", init_cmd), ("enroll", enroll_cmd), ("remove", remove_cmd),
                       ("info", info_cmd), ("verify", verify_cmd), ("search", search_cmd),
                       ("migrate", migrate_cmd), ("reindex", reindex_cmd), ("compact", compact_cmd)):
        app.command(name)(func)


@handle_errors
def init_cmd(
    store: Path = typer.Argument(..., envvar="GALLERY_STORE", show_envvar=False,
                                 help="Store file to create (.h5; default: $GALLERY_STORE)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Encoder (.onnx; .pt/.ts with torch)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Embedding-only gallery: dimension."),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="Embedding-only gallery: model name."),
    version: str = typer.Option("v1", "--model-version", "--version", help="Name of this model version."),
    dtype: str = typer.Option("float32", "--dtype", help="Stored embeddings: float32 or float16."),
    as_json: bool = JSON,
) -> None:
    """Create a gallery store with its first model."""
    if (model is None) == (dim is None):
        raise BadInput("give either --model FILE or --dim D --model-id NAME")
    if dim is not None and not model_id:
        raise BadInput("--dim needs --model-id NAME (how the embeddings' model is identified)")
    with gallery.create(store, model, dim=dim, model_id=model_id, version=version, dtype=dtype) as g:
        result = {**g.info(), "uncalibrated": g.uncalibrated()}
    warn_uncalibrated(result["uncalibrated"], store)
    emit(as_json, result, f"created {store}: model {version}, dim {result['dim']}, {dtype}")


def _short(query: str) -> str:
    """File name only in the table (the JSON keeps the full path): narrow terminals truncate."""
    return Path(query).name if "/" in query else query


@handle_errors
def enroll_cmd(
    store: Path = STORE_ARG,
    images: Optional[Path] = typer.Option(None, "--images", help="ROOT/<identity>/<image> folder."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV `path,identity` (paths relative to --images)."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Embeddings .npy or .h5."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="Ids file: one `id[,identity]` per line."),
    model_version: Optional[str] = typer.Option(None, "--model-version", help="Version that made --embeddings (default: active)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Where the store's model file is now (checked by sha256)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per encoder batch."),
    require_gpu: bool = REQUIRE_GPU,
    providers: Optional[str] = typer.Option(None, "--providers", help="onnxruntime providers, comma-separated."),
    detect: Optional[bool] = DETECT,
    detector: Optional[Path] = DETECTOR,
    landmarks: Optional[Path] = LANDMARKS,
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip ids (or identical files) already "
                                       "enrolled, checked before any encoding."),
    on_error: str = ON_ERROR,
    as_json: bool = JSON,
) -> None:
    """Add images (encoded with the store's active model) or precomputed embeddings."""
    if (images is None) == (embeddings is None):
        raise BadInput("give either --images DIR or --embeddings FILE")
    if skip_existing and images is None:
        raise BadInput("--skip-existing applies to --images")
    if images is not None and model_version is not None:
        raise BadInput("--model-version applies to --embeddings; images use the active model")
    with gallery.open(store, model=model, providers=providers_list(providers), require_gpu=require_gpu) as g, \
            progress_bar("encoding", as_json or images is None) as (on_total, advance):
        result = g.enroll(images, ids, embeddings=embeddings, labels=labels, model_version=model_version,
                          batch_size=batch_size if images is not None else None, skip_existing=skip_existing,
                          on_error=on_error, detect=detect, detector=detector, landmarks=landmarks,
                          progress=advance, on_total=on_total)
    for e in result.get("errors", []) if not as_json else []:
        err_console.print(f"[yellow]skipped:[/] {e['item']}: {e['error']}", highlight=False, soft_wrap=True)
    skipped = len(result.get("skipped_existing", []))
    if skipped and not as_json:
        console.print(f"{skipped} item(s) already in the store were skipped")
    emit(as_json, result, f"enrolled {result['rows']} items into {store} (model {result['model']})")


@handle_errors
def remove_cmd(
    args: List[str] = typer.Argument(..., metavar="[STORE] ID...",
                                     help="Store (default: $GALLERY_STORE), then the item ids to tombstone."),
    store: Optional[Path] = STORE_OPTION,
    as_json: bool = JSON,
) -> None:
    """Tombstone items: never returned by search again; ids are never reused."""
    path, item_ids = split_store(args, store, ("ID...",))
    with gallery.open(path) as g:
        result = g.remove(item_ids)
    emit(as_json, result, f"removed {result['removed']} item(s) ({result['already_removed']} already removed)")


@handle_errors
def info_cmd(store: Path = STORE_ARG, as_json: bool = JSON) -> None:
    """Models, aliases, counts."""
    with gallery.open(store) as g:
        info = g.info()
    if as_json:
        emit_json(info)
        return
    console.print(f"{info['path']}: schema v{info['schema_version']}, dim {info['dim']} {info['dtype']}, "
                  f"{info['live']} live / {info['rows']} rows, active model {info['active_model']}")
    render_table("models", ("version", "sha256", "model_id", "input", "colour", "rows", "active"),
                 [(m["version"], (m["sha256"] or "")[:12], m["model_id"], m["input_size"], m["color_order"],
                   info["per_model"].get(m["version"], 0), m["version"] == info["active_model"])
                  for m in info["models"]])


@handle_errors
def verify_cmd(
    store: Path = STORE_ARG,
    quick: bool = typer.Option(False, "--quick", help="Check that every file exists with its recorded size only."),
    as_json: bool = JSON,
) -> None:
    """Integrity: every file's checksum, counts, ids, models, index. Exit 1 if damaged (names the file)."""
    with gallery.open(store) as g:
        report = g.verify(quick=quick)
    if as_json:
        emit_json(report)
    else:
        status = "[green]OK[/]" if report["ok"] else "[red]DAMAGED[/]"
        console.print(f"{status} {report['path']}: {report['live']} live / {report['rows']} rows in "
                      f"{report['batches']} batches, index {report['index']}")
        for line in report["problems"]:
            console.print(f"  [red]problem:[/] {line}")
        for line in report["warnings"]:
            console.print(f"  [yellow]warning:[/] {line}")
    if not report["ok"]:
        raise typer.Exit(1)


@handle_errors
def search_cmd(
    store: Path = STORE_ARG,
    image: Optional[List[Path]] = typer.Option(None, "--image", help="Query image or folder (repeatable)."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Query embeddings .npy or .h5."),
    k: int = typer.Option(10, "--top-k", "-k", "--k", help="Hits per query."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Reject hits below this cosine score (default: the store's calibrated one per model pair)."),
    accept_uncalibrated: bool = typer.Option(False, "--accept-uncalibrated", help="Let hits of a model pair without a threshold be accepted (at any score)."),
    query_model: Optional[str] = typer.Option(None, "--model-version", "--query-model", help="Version or alias that made the queries (default: active)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Where the query model file is now (checked by sha256)."),
    index: Optional[str] = typer.Option(None, "--index", help=f"{KIND_CHOICES} (default: by size, or the built one)."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="IVF cells visited per query."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW search breadth."),
    rerank: Optional[int] = typer.Option(None, "--rerank", help="Fetch N*k candidates, re-score them exactly "
                                         "from the store (for ivfpq/ivfsq8)."),
    require_gpu: bool = REQUIRE_GPU,
    providers: Optional[str] = typer.Option(None, "--providers", help="onnxruntime providers, comma-separated."),
    detect: Optional[bool] = DETECT,
    detector: Optional[Path] = DETECTOR,
    landmarks: Optional[Path] = LANDMARKS,
    engine: Optional[str] = typer.Option(None, "--engine", help="Search the serving view a `gallery sync` "
                                         "keeps: milvus:URI, qdrant:URI, or a URI this store was synced to."),
    collection: Optional[str] = typer.Option(None, "--collection", help="With --engine: the serving alias "
                                             "(default: the store's file name)."),
    query_on_error: str = typer.Option("skip", "--on-error", help="A query image that is unreadable or has no "
                                       "face: skip it (a record with its error) or fail."),
    as_json: bool = JSON,
) -> None:
    """k nearest gallery items per query, with open-set rejection."""
    if bool(image) == (embeddings is not None):
        raise BadInput("give either --image PATH (repeatable) or --embeddings FILE")
    with gallery.open(store, model=model, providers=providers_list(providers), require_gpu=require_gpu) as g, \
            progress_bar("embedding queries", as_json or not image) as (on_total, advance):
        result = g.search(image or None, k=k, embeddings=embeddings, threshold=threshold, query_model=query_model,
                          index=index, nprobe=nprobe, ef_search=ef_search, rerank=rerank,
                          accept_uncalibrated=accept_uncalibrated, on_error=query_on_error, detect=detect,
                          detector=detector, landmarks=landmarks, engine=engine, collection=collection,
                          progress=advance, on_total=on_total)
    records = result.to_records()
    for e in result.errors if not as_json else []:
        err_console.print(f"[yellow]skipped:[/] {e['item']}: {e['error']}", highlight=False, soft_wrap=True)
    if not accept_uncalibrated:
        warn_uncalibrated(sorted({p for rec in records for p in rec["uncalibrated_pairs"]}), store)
    if result.not_compared:  # a store of several dimensions: rows these queries cannot reach
        left = ", ".join(f"{n} of {m}" for m, n in sorted(result.not_compared.items()))
        err_console.print(f"[yellow]warning:[/] live rows not compared with {result.query_model} queries "
                          f"(another dimension, no vector in its space): {left}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(records)
        return
    render_search(f"search {store} (query model {result.query_model})", records)


def render_search(title: str, records: list[dict]) -> None:
    """One row per hit with its pair threshold and verdict; the query's decision on its first row."""
    rows = []
    for rec in records:
        decision = rec["match"] if rec["match"] is not None else "(rejected)"
        if not rec["hits"]:
            rows.append((_short(rec["query"]), decision, "-", "", None, None, None, ""))
        for rank, hit in enumerate(rec["hits"], 1):
            verdict = "match" if hit["match"] else ("yes" if hit["accepted"] else
                                                   ("uncalibrated" if hit["threshold"] is None else "no"))
            rows.append((_short(rec["query"]) if rank == 1 else "", decision if rank == 1 else "", rank,
                         hit["identity"], hit["score"], hit["threshold"], hit["model_version"], verdict))
    render_table(title, ("query", "decision", "rank", "identity", "score", "threshold", "model", "accepted"), rows)


@handle_errors
def migrate_cmd(store: Path = STORE_ARG, as_json: bool = JSON) -> None:
    """Convert a single-file (v1/v2) store to the crash-safe directory layout, same path (a v3 directory: renumbered v4); killable, rerun finishes."""
    from gallery.store.migrations import migrate_path

    with progress_bar("migrate rows", as_json) as (on_total, advance):
        result = migrate_path(store, progress=advance, on_total=on_total)
    done = (f" (old file kept as {result['backup']})" if "backup" in result else f" (from v{result.get('from')})") \
        if result.get("migrated") else " (already current)"
    emit(as_json, result, f"{store}: schema v{result['schema_version']}{done}")


@handle_errors
def compact_cmd(
    store: Path = STORE_ARG,
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be merged; write nothing."),
    as_json: bool = JSON,
) -> None:
    """Merge small segment, deletion and overlay files (one atomic commit; automatic past a threshold)."""
    with gallery.open(store) as g:
        result = g.compact(dry_run=dry_run)
    emit(as_json, result, f"{store}: {result['segments_before']} -> {result['segments_after']} segments, "
                          f"{result['files_removed']} files retired")


@handle_errors
def reindex_cmd(
    store: Path = STORE_ARG,
    index: Optional[str] = typer.Option(None, "--index", help=f"{KIND_CHOICES} (default: by size: {DEFAULTS_HELP})."),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="IVF cells."),
    hnsw_m: Optional[int] = typer.Option(None, "--hnsw-m", help="HNSW links per node."),
    as_json: bool = JSON,
) -> None:
    """Rebuild the faiss index sidecar from the store (normally automatic when stale)."""
    with gallery.open(store) as g, progress_bar("index rows", as_json) as (on_total, advance):
        meta = g.reindex(index=index, nlist=nlist, hnsw_m=hnsw_m, progress=advance, on_total=on_total)
    emit(as_json, meta, f"built {meta['params']['kind']} index over {meta['count']} live rows of {store}")
