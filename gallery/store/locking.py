"""One writer at a time: an flock on the store's own inode.

The lock is taken on what the path resolves to (the store directory, or a single-file
store's file), never on a name beside it: every symlink, hard link or rename of the store
reaches the same inode, so two writers can never both hold it, and there is no lock file
whose deletion could let a second writer in. flock (not a "file exists" check) because the
kernel drops it when the holder dies: a SIGKILLed writer leaves nothing to clean up.
flock belongs to the open file description, so a second Store opened for writing in the
same process is refused too. Readers never take the lock.

The holder's pid is written to a small info file (`LOCK` inside a store directory,
`STORE.lock` beside a single-file store) for the "locked" message only; it decides nothing.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gallery.errors import BadInput, StoreLocked


def lock_path(store_path: str | Path) -> Path:
    """The pid info file of a store (not the lock itself)."""
    real = Path(os.path.realpath(store_path))
    return real / "LOCK" if real.is_dir() else Path(str(real) + ".lock")


class WriterLock:
    """flock(LOCK_EX) on the inode `store_path` resolves to, which must exist."""

    def __init__(self, store_path: str | Path) -> None:
        self.store_path = Path(store_path)
        self.path = lock_path(store_path)
        self._fd: int | None = None
        self._info: int | None = None

    def acquire(self) -> "WriterLock":
        try:
            # The info file first: a read-only file system or a folder without write
            # permission is reported here, before anything else is touched.
            info = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BadInput(f"cannot write store {self.store_path}: {exc.strerror} ({self.path})") from None
        try:
            fd = os.open(os.path.realpath(self.store_path), os.O_RDONLY)
        except OSError as exc:
            os.close(info)
            raise BadInput(f"cannot open store {self.store_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(info, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            os.close(info)
            raise StoreLocked(
                f"store {self.store_path} is locked by another writer (pid {holder}); "
                "wait for it to finish"
            ) from None
        try:
            os.ftruncate(info, 0)
            os.pwrite(info, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the note only names the holder; the command's own space check speaks
        self._fd, self._info = fd, info
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._info, 0)
        except OSError:
            pass  # the info file is advisory; the lock itself goes with the fd below
        os.close(self._info)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = self._info = None

    @property
    def held(self) -> bool:
        return self._fd is not None
