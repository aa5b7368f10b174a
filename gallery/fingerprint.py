"""Content fingerprints: model identity, dataset listings, embedding checksums."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes: the identity of a model file everywhere in gallery."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def strings_sha256(items: Iterable[str]) -> str:
    """Order-sensitive fingerprint of a list of strings (e.g. a dataset listing)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """Fingerprint of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()
