"""`gallery serve`: the HTTP search service (gallery/serve, the `[serve]` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.common import STORE_ARG, handle_errors
from gallery.errors import BadInput


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


@handle_errors
def serve_cmd(
    store: Path = STORE_ARG,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8080, "--port", help="TCP port."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File holding the bearer "
                                                "key every route but /healthz requires."),
    max_batch: int = typer.Option(64, "--max-batch", help="Queries or items per request."),
    max_body_mb: float = typer.Option(16.0, "--max-body-mb", help="Request body limit in MiB."),
    detector: Optional[Path] = typer.Option(None, "--detector", help="YuNet ONNX for face models' "
                                            "image requests (default: $GALLERY_YUNET_MODEL)."),
) -> None:
    """Serve searches and enrolments over HTTP; follows upgrades and rollbacks live."""
    try:
        from gallery.serve.config import ServeConfig, read_api_key
        from gallery.serve.server import serve
    except ImportError as exc:
        raise BadInput(f"gallery serve needs the [serve] extra (pip install 'gallery[serve]'): "
                       f"{exc.name} is missing") from None
    key = read_api_key(api_key_file) if api_key_file is not None else None
    serve(ServeConfig(store, host=host, port=port, api_key=key, max_batch=max_batch,
                      max_body_mb=max_body_mb, detector=detector))
