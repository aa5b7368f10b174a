"""The store directory's commit point: one JSON manifest, replaced atomically.

A store is a directory (see schema.py) of immutable data files and one `MANIFEST` that
lists every live file with its size and sha256, plus the models, aliases, lineage,
backfill progress and history. Nothing a manifest lists is ever modified. A commit:
  1. writes each new file (as NAME.tmp, fsynced, renamed to its final never-reused name)
     and fsyncs the directory, so the names are durable too;
  2. writes the next manifest to `MANIFEST.tmp`, fsyncs it;
  3. renames it over `MANIFEST` (atomic) and fsyncs the directory.
A crash before 3 leaves the previous manifest in force (the new files are orphans, removed
by the next writer); after 3 the commit is durable. Readers load one manifest and open the
files it lists: a consistent snapshot whatever writers do next.

`durable=False` (`gallery --no-fsync`, GALLERY_NO_FSYNC=1) skips the fsyncs: for
benchmarks only; a power loss can then lose acknowledged commits (a process crash cannot).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from gallery.errors import BadInput, GalleryError

NAME = "MANIFEST"
TMP = "MANIFEST.tmp"
HASH_BLOCK = 1 << 22
COMMIT_HEADROOM = 64 << 10  # file system blocks and metadata of the new MANIFEST


def durable_default() -> bool:
    return os.environ.get("GALLERY_NO_FSYNC", "") in ("", "0")


def fsync_path(path: Path, durable: bool = True) -> None:
    """fsync a file or a directory by path."""
    if not durable:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """A new immutable file with `data`, fsynced; never replaces an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def missing(shown: Path) -> BadInput:
    """The refusal for a directory without a manifest (opening it, or a reader's stamp)."""
    return BadInput(f"{shown} is a directory but not a gallery store (no {NAME})")


def load(directory: Path, display: Path | None = None) -> dict:
    """The manifest in `directory` (`display`: the store's name for messages)."""
    shown = display or directory
    try:
        data = (directory / NAME).read_bytes()
    except FileNotFoundError:
        raise missing(shown) from None
    except OSError as exc:
        raise BadInput(f"cannot read {shown}/{NAME}: {exc.strerror}") from None
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BadInput(f"store {shown} is damaged: {NAME} is not valid JSON") from None
    if not isinstance(manifest, dict) or "version" not in manifest:
        raise BadInput(f"store {shown} is damaged: {NAME} has no version")
    if manifest.pop("checksum", None) != _checksum(manifest):
        raise BadInput(f"store {shown} is damaged: {NAME} fails its checksum (restore it from a backup)")
    return manifest


def _checksum(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (without this field): a flipped bit that still
    parses as JSON (a count, a file's recorded checksum) is caught at load."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def commit(directory: Path, manifest: dict, durable: bool = True, display: Path | None = None) -> None:
    """Make `manifest` the store's state (steps 2-3 above; the files it lists are written)."""
    data = json.dumps({**manifest, "checksum": _checksum(manifest)}, sort_keys=True, default=str).encode()
    # Commands that write only a manifest (upgrade, rollback, alias, prune, ...) are refused
    # here, before any byte is written, when the disk cannot hold it.
    check_space(directory, len(data) + COMMIT_HEADROOM, "committing the manifest", display)
    # The new files' names first: a manifest must never be durable before the files it lists.
    fsync_path(directory, durable)
    tmp = directory / TMP
    tmp.unlink(missing_ok=True)  # a crashed writer's leftover
    try:
        write_bytes(tmp, data, durable)
    except OSError:
        tmp.unlink(missing_ok=True)  # a disk filled since the check: leave no partial file behind
        raise
    os.replace(tmp, directory / NAME)
    fsync_path(directory, durable)


def check_space(directory: Path, need: int, what: str, display: Path | None = None) -> None:
    """Refuse before writing anything when the file system cannot hold `need` bytes
    (`display`: the store's name for the message; `directory` may be a /proc/self/fd path)."""
    free = shutil.disk_usage(directory).free
    if free < need:
        raise GalleryError(f"not enough free disk space for {display or directory}: {what} needs "
                           f"~{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free; nothing was written")
