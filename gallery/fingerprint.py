"""Content fingerprints: model identity, dataset contents, embedding checksums.

A dataset's fingerprint keys the old-feature cache and `--resume`'s data check, so it
covers every image's bytes, not only the file names: rewriting images under the same
names must change it. Hashing costs one sha256 pass over the bytes; BENCHMARKS.md has
the measured cost (1M files).
"""

from __future__ import annotations

import hashlib
import os
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


# path -> (stat key, digest). The key holds st_ctime_ns, which every write or utime()
# moves and no user call can set back, so a rewrite with a restored mtime still misses.
_MEMO: dict[str, tuple[tuple[int, ...], str]] = {}


def file_sha256_memo(path: str | Path) -> str:
    """file_sha256, remembered for this process while the file's stat (incl. ctime) holds.

    `gallery train-compatible` opens its dataset twice (old-feature extraction, then the
    loop): a 50 GB RecordIO file is hashed once per process, not per open.
    """
    stat = os.stat(path)
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    name = str(Path(path).resolve())
    cached = _MEMO.get(name)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = file_sha256(path)
    _MEMO[name] = (key, digest)
    return digest


class ContentDigest:
    """Fingerprint of named byte strings (relative path, file bytes), order-sensitive."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def add(self, name: str, data: bytes) -> None:
        self._digest.update(name.encode("utf-8"))
        self._digest.update(b"\0")
        self._digest.update(hashlib.sha256(data).digest())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


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
