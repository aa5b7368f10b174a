"""One writer at a time: an flock on STORE.lock holding the writer's pid.

flock (not a bare "file exists" check) because the kernel drops the lock when the
holder dies, so a crashed or SIGKILLed writer never leaves a lock anyone has to
clean up: the next writer simply takes it. Readers never take the lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gallery.errors import BadInput, StoreLocked


def lock_path(store_path: str | Path) -> Path:
    return Path(str(store_path) + ".lock")


class WriterLock:
    def __init__(self, store_path: str | Path) -> None:
        self.store_path = Path(store_path)
        self.path = lock_path(store_path)
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only file system, no permission, missing folder
            raise BadInput(f"cannot write store {self.store_path}: {exc.strerror} ({self.path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"store {self.store_path} is locked by another writer (pid {holder}); "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # The file stays: unlinking a locked file lets a racer lock a different inode.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
