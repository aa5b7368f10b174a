"""Request guards as pure ASGI middleware: the bearer key and the body-size limit.

Both run before any route code, so an unauthenticated or oversized request costs no
parsing. The key is compared in constant time (hmac.compare_digest) so its bytes cannot
be guessed from response timing.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

OPEN_PATHS = ("/healthz",)  # liveness probes carry no credentials


class BodyTooLarge(Exception):
    """Raised from `receive` when a streamed body passes the limit (HTTP 413)."""


async def send_error(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key is not None else None
        self.max_body = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                reason = "missing" if not given else "wrong"
                await send_error(send, 401, f"{reason} API key: send Authorization: Bearer <key>",
                                 {"WWW-Authenticate": "Bearer"})
                return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await send_error(send, 413, f"request body over the limit of {self.max_body:,} bytes")
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Any) -> Any:
        seen = 0

        async def wrapped() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # chunked upload without a length: counted as it arrives
                    raise BodyTooLarge(f"request body over the limit of {self.max_body:,} bytes")
            return message

        return wrapped
