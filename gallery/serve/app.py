"""The FastAPI application: routes, JSON errors, wiring of switcher, metrics and guards.

Every route takes the current Snapshot once (`_snapshot`) and answers from it alone;
responses carry the query model version that answered (`model_version` in the body and
the X-Gallery-Model-Version header) and the store generation (X-Gallery-Generation).
Errors are `{"error": "<one line>"}`: 400 bad input, 401 key, 404 unknown item or route,
413 body / batch / image too large, 415 content type, 422 malformed request, 503 not
ready yet or the store's lock held by another writer (with Retry-After).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import anyio
import anyio.to_thread
import faiss
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser

from gallery.errors import BadInput, GalleryError, NotFound, StoreLocked
from gallery.search import SearchResult, search
from gallery.serve import writes
from gallery.serve.config import ServeConfig
from gallery.serve.guards import BodyTooLarge, GuardMiddleware
from gallery.serve.metrics import MetricsMiddleware, ServiceMetrics
from gallery.serve.state import Snapshot
from gallery.serve.switcher import EncoderCache, Switcher
from gallery.serve.uploads import ImageEncoder, ImageTooLarge, Upload

log = logging.getLogger(__name__)

MAX_K = 1000
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"


class TooLarge(BadInput):
    """More queries or items in one request than --max-batch (HTTP 413)."""


class NotReady(GalleryError):
    """No snapshot loaded yet (HTTP 503)."""


# ---- request bodies (JSON); multipart forms carry the same fields -------------------------
class SearchBody(BaseModel):
    embeddings: list[list[float]] = Field(description="Query embeddings, one row per query (raw or unit).")
    k: int = Field(10, description="Hits per query.")
    threshold: float | None = Field(None, description="Override every stored threshold.")
    query_model: str | None = Field(None, description="Version or alias that made the embeddings "
                                    "(default: the active query model).")
    accept_uncalibrated: bool = Field(False, description="Accept hits of (query, row) model pairs "
                                      "that have no threshold (default: listed, never accepted).")


class ItemIn(BaseModel):
    id: str
    identity: str | None = None
    embedding: list[float]


class EnrollBody(BaseModel):
    items: list[ItemIn]
    model_version: str | None = Field(None, description="Version that made the embeddings "
                                      "(default: the active query model).")


def _form_schema(fields: dict[str, dict]) -> dict:
    return {"type": "object", "properties": fields}


IMAGES = {"type": "array", "items": {"type": "string", "format": "binary"}}
SEARCH_DOC = {"requestBody": {"required": True, "content": {
    JSON_TYPE: {"schema": SearchBody.model_json_schema()},
    MULTIPART_TYPE: {"schema": _form_schema({"image": IMAGES, "k": {"type": "integer"},
                                             "threshold": {"type": "number"},
                                             "accept_uncalibrated": {"type": "boolean"}})}}}}
ENROLL_DOC = {"requestBody": {"required": True, "content": {
    JSON_TYPE: {"schema": EnrollBody.model_json_schema()},
    MULTIPART_TYPE: {"schema": _form_schema({"image": IMAGES, "id": {"type": "array", "items": {"type": "string"}},
                                             "identity": {"type": "array", "items": {"type": "string"}}})}}}}


def create_app(config: ServeConfig, switcher: Switcher | None = None) -> FastAPI:
    """The service for `config.store` (encoders: every format gallery.encoder loads)."""
    switcher = switcher or Switcher(config.store, config.poll_seconds, EncoderCache())
    metrics = ServiceMetrics(switcher.staleness)
    switcher.listener = metrics.on_switcher
    images = ImageEncoder(config.max_image_pixels, config.detector)
    # Uploads stay in memory up to the body limit (Starlette spools bigger parts to a temp
    # file): the service writes nothing outside the store and its sidecars.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, config.max_body_bytes)

    limiter: dict[str, anyio.CapacityLimiter] = {}

    async def compute(func: Any, *args: Any) -> Any:
        """CPU-bound request work (encoding, faiss) on at most `search_workers` threads: more
        only queue for the GIL and the cores, and starve the event loop serving the sockets."""
        return await anyio.to_thread.run_sync(functools.partial(func, *args), limiter=limiter["compute"])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        limiter["compute"] = anyio.CapacityLimiter(config.search_workers)
        switcher.start()
        try:
            yield
        finally:
            switcher.stop()

    app = FastAPI(title="gallery", summary="Search a gallery store over HTTP; follows upgrades and "
                  "rollbacks without failing a request.", lifespan=lifespan)
    app.state.switcher, app.state.metrics, app.state.config = switcher, metrics, config
    _errors(app)

    def _snapshot() -> Snapshot:
        snap = switcher.current
        if snap is None:
            raise NotReady(f"still loading {config.store}" + (f" ({switcher.last_error})"
                                                                 if switcher.last_error else ""))
        return snap

    def _batch(n: int, what: str) -> None:
        if n == 0:
            raise BadInput(f"no {what} given")
        if n > config.max_batch:
            raise TooLarge(f"{n} {what} in one request, over --max-batch {config.max_batch}")

    # ---- search ---------------------------------------------------------------------------
    @app.post("/v1/search", openapi_extra=SEARCH_DOC, tags=["search"])
    async def search_route(request: Request) -> Response:
        """k nearest items per query: JSON embeddings, or multipart images (`image` files)
        encoded with the active query model's declared preprocessing."""
        snap = _snapshot()
        kind = _content_type(request)
        if kind == MULTIPART_TYPE:
            form = await request.form(max_files=config.max_batch * 4 + 16)
            uploads = await _uploads(form)
            _batch(len(uploads), "images")
            k, threshold = _int(form.get("k"), "k", 10), _float(form.get("threshold"), "threshold")
            accept = _bool(form.get("accept_uncalibrated"), "accept_uncalibrated")
            result = await compute(_search_images, snap, uploads, k, threshold, accept)
            names = [u.name for u in uploads]
        else:
            body = _parse(SearchBody, await request.body())
            _batch(len(body.embeddings), "query embeddings")
            queries = _matrix([row for row in body.embeddings], "embeddings")
            result = await compute(_search, snap, queries, body.k, body.threshold, body.query_model,
                                   body.accept_uncalibrated)
            names = list(range(len(queries)))
        return _respond(snap, render(result, names), version=result.query_model)

    def _search(snap: Snapshot, queries: np.ndarray, k: int, threshold: float | None,
                query_model: str | None, accept_uncalibrated: bool) -> SearchResult:
        faiss_threads(config.faiss_threads)
        if not 1 <= k <= MAX_K:
            raise BadInput(f"k must be 1..{MAX_K}, got {k}")
        return search(snap, queries, k=k, threshold=threshold, query_version=query_model,
                      accept_uncalibrated=accept_uncalibrated)

    def _search_images(snap: Snapshot, uploads: list[Upload], k: int, threshold: float | None,
                       accept_uncalibrated: bool) -> SearchResult:
        return _search(snap, _encode(snap, uploads), k, threshold, None, accept_uncalibrated)

    def _encode(snap: Snapshot, uploads: list[Upload]) -> np.ndarray:
        if snap.encoder is None:
            raise BadInput(f"image queries are not available: {snap.encoder_error}")
        return images.embed(snap.encoder, uploads)

    # ---- writes ---------------------------------------------------------------------------
    @app.post("/v1/items", status_code=201, openapi_extra=ENROLL_DOC, tags=["items"])
    async def enroll_route(request: Request) -> Response:
        """Enrol items: JSON embeddings with ids, or multipart images (`image` files with one
        `id` field each, optional `identity` fields) encoded with the active query model."""
        snap = _snapshot()
        if _content_type(request) == MULTIPART_TYPE:
            form = await request.form(max_files=config.max_batch * 4 + 16)
            uploads = await _uploads(form)
            _batch(len(uploads), "images")
            ids = [str(v) for v in form.getlist("id")]
            identities = [str(v) for v in form.getlist("identity")] or None
            if len(ids) != len(uploads) or (identities is not None and len(identities) != len(ids)):
                raise BadInput(f"{len(uploads)} images need as many `id` fields (got {len(ids)}) "
                               "and as many or no `identity` fields")
            result = await run_in_threadpool(_enroll_images, snap, uploads, ids, identities)
        else:
            body = _parse(EnrollBody, await request.body())
            _batch(len(body.items), "items")
            emb = _matrix([item.embedding for item in body.items], "embeddings")
            ids = [item.id for item in body.items]
            identities = [item.identity if item.identity is not None else item.id for item in body.items]
            result = await run_in_threadpool(writes.enroll, config.store, emb, ids, identities,
                                             body.model_version, config.lock_wait_seconds)
        switcher.wake()
        out = {"enrolled": result["rows"], "ids": ids, "rows_model_version": result["model"]}
        return _respond(snap, out, status=201)

    def _enroll_images(snap: Snapshot, uploads: list[Upload], ids: list[str],
                       identities: list[str] | None) -> dict:
        emb = _encode(snap, uploads)  # before the lock: the lock is held for the commit only
        hashes = [hashlib.sha256(u.data).hexdigest() for u in uploads]  # as the CLI: the file's sha256
        return writes.enroll(config.store, emb, ids, identities, snap.active_model,
                             config.lock_wait_seconds, encoded_by=snap.active_model, content_hashes=hashes)

    @app.delete("/v1/items/{item_id:path}", tags=["items"])
    async def remove_route(item_id: str) -> Response:
        """Tombstone one item: never returned by search again; its id is never reused."""
        snap = _snapshot()
        result = await run_in_threadpool(writes.remove, config.store, [item_id], config.lock_wait_seconds)
        switcher.wake()
        return _respond(snap, {"removed": result["removed"], "already_removed": result["already_removed"],
                               "id": item_id})

    # ---- state ----------------------------------------------------------------------------
    @app.get("/v1/info", tags=["state"])
    def info_route() -> Response:
        """The served snapshot: store, models, thresholds, index, limits."""
        snap = _snapshot()
        return _respond(snap, {**snap.describe(), "thresholds": snap.table, "ready": switcher.ready,
                               "service": config.public, "model_version": snap.active_model})

    @app.get("/healthz", tags=["state"])
    def health_route() -> Response:
        """Alive (no key needed)."""
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["state"])
    def ready_route() -> Response:
        """Model, index and thresholds loaded for the store's current generation."""
        snap = switcher.current
        body = {"ready": switcher.ready, "generation": snap.generation if snap else None,
                "model_version": snap.active_model if snap else None, "store_generation": switcher.seen}
        if not switcher.ready:
            body["error"] = "loading generation " + str(switcher.seen) + (
                f" ({switcher.last_error})" if switcher.last_error else "")
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        return _respond(snap, body)

    @app.get("/metrics", tags=["state"])
    def metrics_route() -> Response:
        """Prometheus text format."""
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(GuardMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: also counts guard refusals
    return app


_thread = threading.local()


def faiss_threads(n: int) -> None:
    """OpenMP's thread count is per calling thread: set it in each request thread, once."""
    if getattr(_thread, "faiss_threads", None) != n:
        faiss.omp_set_num_threads(n)
        _thread.faiss_threads = n


# ---- rendering ---------------------------------------------------------------------------
def render(result: SearchResult, names: list) -> dict:
    """The library's own records (SearchResult.to_records): per query every hit (item id,
    identity, score, row model version, threshold applied or None when uncalibrated,
    accepted) and the decision (match, rejected)."""
    return {"model_version": result.query_model, "results": result.to_records(names)}


def _respond(snap: Snapshot, body: dict, status: int = 200, version: str | None = None) -> Response:
    version = version or snap.active_model
    body = {**body, "model_version": version, "generation": snap.generation}
    return JSONResponse(body, status_code=status, headers={
        "X-Gallery-Model-Version": version, "X-Gallery-Generation": snap.generation})


# ---- request parsing ---------------------------------------------------------------------
def _content_type(request: Request) -> str:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in (JSON_TYPE, MULTIPART_TYPE):
        raise UnsupportedMedia(f"content type must be {JSON_TYPE} or {MULTIPART_TYPE}, got "
                               f"{kind or 'none'}")
    return kind


class UnsupportedMedia(BadInput):
    """HTTP 415."""


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"body is not valid JSON ({exc.__class__.__name__})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _matrix(rows: list[list[float]], what: str) -> np.ndarray:
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise BadInput(f"{what} rows have different lengths: {sorted(widths)[:4]}")
    with np.errstate(over="ignore"):
        return np.asarray(rows, dtype=np.float32)


async def _uploads(form: Any) -> list[Upload]:
    files = [v for v in form.getlist("image") if isinstance(v, UploadFile)]
    stray = [k for k, v in form.multi_items() if isinstance(v, UploadFile) and k != "image"]
    if stray:
        raise BadInput(f"image files go in the `image` field, got `{stray[0]}`")
    return [Upload(f.filename or f"image{i}", await f.read()) for i, f in enumerate(files)]


def _int(value: Any, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(str(value))
    except ValueError:
        raise BadInput(f"{name} must be an integer, got {str(value)[:40]!r}") from None


def _bool(value: Any, name: str) -> bool:
    text = "" if value is None else str(value).strip().lower()
    if text not in ("", "true", "false", "1", "0"):
        raise BadInput(f"{name} must be true or false, got {text[:40]!r}")
    return text in ("true", "1")


def _float(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(str(value))
    except ValueError:
        raise BadInput(f"{name} must be a number, got {str(value)[:40]!r}") from None


# ---- errors ------------------------------------------------------------------------------
def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message.splitlines()[0] if message else "error"},
                        status_code=status, headers=headers)


def _status(exc: GalleryError) -> tuple[int, dict[str, str] | None]:
    for kind, status in ((NotFound, 404), (TooLarge, 413), (ImageTooLarge, 413), (UnsupportedMedia, 415),
                         (BadInput, 400)):
        if isinstance(exc, kind):
            return status, None
    if isinstance(exc, (StoreLocked, NotReady)):
        return 503, {"Retry-After": "1"}
    return 500, None  # a failure of the service or the disk, not of the request


def _errors(app: FastAPI) -> None:
    @app.exception_handler(GalleryError)
    async def gallery_error(_: Request, exc: GalleryError) -> JSONResponse:
        status, headers = _status(exc)
        if status == 500:
            log.error("request failed: %s", exc)
        return _error(status, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(422, f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'malformed')}")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"internal error ({exc.__class__.__name__})")
