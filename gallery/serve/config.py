"""The service's settings as data (CLI options -> ServeConfig -> app and server)."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gallery.errors import BadInput

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    store: Path
    host: str = "127.0.0.1"          # loopback unless told otherwise
    port: int = 8080
    api_key: str | None = field(default=None, repr=False)  # never logged
    max_batch: int = 64              # queries (or items) per request
    max_body_mb: float = 16.0        # request body, all parts together
    max_image_pixels: int = 40_000_000  # per decoded image: decompression-bomb guard
    poll_seconds: float = 0.2        # how often the store's generation is checked
    detector: Path | None = None     # YuNet ONNX for face models (default: $GALLERY_YUNET_MODEL)
    lock_wait_seconds: float = 2.0   # a writer waits this long for another's lock, then 503
    graceful_seconds: float = 10.0   # SIGTERM: in-flight requests get this long to finish
    # faiss OpenMP threads per search. A service answers many small requests at once, in
    # parallel threads; OpenMP teams per request thread spin against each other (measured:
    # a 2k x 512 flat search at 43 ms instead of 1 ms on 2 cores), so one thread each.
    faiss_threads: int = 1
    search_workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # searches at once

    def __post_init__(self) -> None:
        self.store = Path(self.store)
        if self.max_batch < 1:
            raise BadInput(f"--max-batch must be >= 1, got {self.max_batch}")
        if not self.max_body_mb > 0:
            raise BadInput(f"--max-body-mb must be > 0, got {self.max_body_mb}")
        if not 0 <= self.port <= 65535:
            raise BadInput(f"--port must be 0..65535, got {self.port}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def public(self) -> dict:
        """What /v1/info shows of the settings (no key)."""
        return {"max_batch": self.max_batch, "max_body_mb": self.max_body_mb,
                "max_image_pixels": self.max_image_pixels, "auth": self.api_key is not None}

    def warn_if_exposed(self) -> None:
        if self.api_key is None and not _loopback(self.host):
            log.warning("serving %s on %s without --api-key-file: anyone who can reach it can "
                        "search and change the gallery", self.store, self.host)


def read_api_key(path: str | Path) -> str:
    """The bearer key: the file's content without surrounding whitespace."""
    path = Path(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read --api-key-file {path}: {exc.__class__.__name__}") from None
    if len(key) < 16 or any(c.isspace() for c in key):
        raise BadInput(f"--api-key-file {path}: the key must be one line of at least 16 "
                       "non-space characters")
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("--api-key-file %s is readable by other users (chmod 600 it)", path)
    return key


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
