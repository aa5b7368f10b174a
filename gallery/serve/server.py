"""Run the service under uvicorn: one process, graceful stop on SIGTERM / SIGINT.

uvicorn stops accepting connections on SIGTERM, lets in-flight requests finish (up to
`graceful_seconds`), then runs the app's shutdown, which stops the switcher. The store's
writer lock is only ever held inside a write request's commit, so once in-flight
requests are done no lock is held.
"""

from __future__ import annotations

import logging
from typing import Any

from gallery.serve.config import ServeConfig
from gallery.store import generation

log = logging.getLogger(__name__)


def uvicorn_config(config: ServeConfig, log_level: str = "info") -> Any:
    # uvicorn and FastAPI are the optional [serve] extra: only `gallery serve` needs them.
    import uvicorn

    from gallery.serve.app import create_app  # imports fastapi: same optional extra

    return uvicorn.Config(create_app(config), host=config.host, port=config.port,
                          log_level=log_level, access_log=False, server_header=False,
                          timeout_graceful_shutdown=config.graceful_seconds, lifespan="on")


def serve(config: ServeConfig) -> None:
    """Serve `config.store` until SIGTERM/SIGINT (BadInput first if it is not a store)."""
    import uvicorn  # the optional [serve] extra

    generation(config.store)  # refuse a missing or unreadable store before binding
    config.warn_if_exposed()
    uvicorn.Server(uvicorn_config(config)).run()
