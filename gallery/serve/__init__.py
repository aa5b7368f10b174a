"""`gallery serve`: a long-running HTTP search service over one store (FastAPI + uvicorn).

- config.py: ServeConfig (bind address, API key, limits), the `[serve]` settings as data.
- state.py: Snapshot, everything one store generation serves from, held in memory.
- switcher.py: Switcher, notices a new generation, loads it in the background, swaps.
- uploads.py: guarded image decoding (size limits, decompression bombs) and encoding.
- writes.py: enrol / remove as ordinary store writers (lock only for the commit).
- metrics.py: Prometheus metrics (prometheus-client) and the request-metrics middleware.
- guards.py: bearer-key check and request-body limit (ASGI middleware).
- app.py: the FastAPI routes and JSON errors; server.py: uvicorn with graceful stop.

Needs the `[serve]` extra (fastapi, uvicorn, prometheus-client, python-multipart); the
rest of `gallery` never imports this package.
"""

from gallery.serve.config import ServeConfig

__all__ = ["ServeConfig"]
