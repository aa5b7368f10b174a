"""Optional HMAC-SHA256 signatures on compatibility reports, for teams that separate duties.

`gallery check-compat --sign-key KEY` adds `signature` to the report: an HMAC-SHA256,
keyed by the file KEY, over the canonical report (every key but `signature`, JSON with
sorted keys, no whitespace, ASCII only). `gallery upgrade --require-signed --sign-key KEY`
refuses a report without one or whose HMAC does not match: any edit after signing (a
verdict, a threshold, a model hash, a number) or another key. Without a key, the person
who runs the upgrade can check the report's internal consistency (gallery/compat/verdicts.py)
but not who wrote it.

The key file's bytes are the key (a trailing newline is dropped, so `openssl rand -hex 32
> key` works); at least 16 bytes. `key_id` is an HMAC of a fixed label, so two reports
can be seen to share a key without the key's own hash being published.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from gallery.compat.report import as_json_values
from gallery.errors import BadInput

ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16


def read_key(path: str | Path) -> bytes:
    path = Path(path)
    try:
        key = path.read_bytes().rstrip(b"\r\n")
    except FileNotFoundError:
        raise BadInput(f"signing key not found: {path}") from None
    except OSError as exc:
        raise BadInput(f"cannot read signing key {path}: {exc.strerror or exc.__class__.__name__}") from None
    if len(key) < MIN_KEY_BYTES:
        raise BadInput(f"signing key {path} has {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                       "(e.g. `openssl rand -hex 32 > KEY`)")
    return key


def canonical(report: dict) -> bytes:
    """The bytes that are signed: the report without `signature`, in one fixed JSON form."""
    body = {k: v for k, v in report.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def key_id(key: bytes) -> str:
    return hmac.new(key, b"gallery.compat-report key id", hashlib.sha256).hexdigest()[:16]


def sign(report: dict, key: bytes) -> dict:
    """The report as it will be read back from JSON, with its signature added."""
    signed = as_json_values(report)
    signed.pop("signature", None)
    signed["signature"] = {"algorithm": ALGORITHM, "key_id": key_id(key),
                           "hmac": hmac.new(key, canonical(signed), hashlib.sha256).hexdigest()}
    return signed


def verify(report: dict, key: bytes | None, required: bool) -> str:
    """'verified', 'unsigned' or 'not checked (no key)'; raises BadInput when the signature
    does not match, or when `required` and the report is unsigned or no key is given."""
    signature = report.get("signature")
    if key is None:
        if required:
            raise BadInput("--require-signed needs --sign-key KEY (the key the report was signed with)")
        return "unsigned" if signature is None else "not checked (no key)"
    if signature is None:
        if required:
            raise BadInput("compat report is not signed (--require-signed); rerun check-compat with --sign-key")
        return "unsigned"
    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM \
            or not isinstance(signature.get("hmac"), str):
        raise BadInput(f"compat report signature is malformed (expected {ALGORITHM})")
    expected = hmac.new(key, canonical(report), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature["hmac"]):
        other = signature.get("key_id") not in (None, key_id(key))
        raise BadInput("compat report signature does not match: "
                       + ("it was signed with another key" if other else "the report was altered after signing"))
    return "verified"
