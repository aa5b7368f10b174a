"""Switcher: follows the store's generation and swaps the served Snapshot atomically.

A background thread polls `gallery.store.generation` (every `poll_seconds`, or at once
when a write route wakes it). A new generation is loaded beside the current snapshot;
only a complete, consistent one replaces it, by one reference assignment, so requests
already running finish on the snapshot they took and new ones get the new one. A load
that fails (the store mid-write, a transient read error) keeps the old snapshot and is
retried on the next poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from gallery.encoder import load_registered
from gallery.errors import GalleryError
from gallery.serve.state import STORE_HANDLES, GenerationMoved, Snapshot, load_snapshot
from gallery.store import Store, generation

log = logging.getLogger(__name__)

Listener = Callable[[str, Any], None]  # ("swap", Snapshot) | ("load_failed", reason) | ("load_seconds", s)


class EncoderCache:
    """Query encoders by model file identity, kept across generations: an upgrade ->
    rollback -> upgrade reloads no model, and a switch costs no file hashing."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, store: Store, version: str) -> Any:
        info = store.model(version)
        path = Path(info.path or "")
        key = None
        if info.has_encoder and path.is_file():
            st = os.stat(path)
            key = (info.sha256, str(path.resolve()), st.st_mtime_ns, st.st_size)
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
        encoder = load_registered(info, store.path)  # checks the file's sha256
        with self._lock:
            self._cache[key] = encoder
        return encoder


class Switcher:
    def __init__(self, path: str | Path, poll_seconds: float = 0.2,
                 encoders: EncoderCache | None = None, listener: Listener | None = None) -> None:
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self.encoders = encoders or EncoderCache()
        self.listener = listener or (lambda event, value: None)
        self.current: Snapshot | None = None
        self.seen: str | None = None          # the newest generation observed on disk
        self.seen_since: float | None = None  # when `seen` first differed from the served one
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> "Switcher":
        self._thread = threading.Thread(target=self._run, name="gallery-switcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        """Check the generation now (after this service's own write)."""
        self._wake.set()

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float) -> Snapshot | None:
        """Block until the served snapshot satisfies `predicate` (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.current
            if snap is not None and predicate(snap):
                return snap
            time.sleep(0.01)
        return None

    # ---- state -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """A snapshot is served and it is the newest generation seen on disk."""
        snap = self.current
        return snap is not None and snap.generation == self.seen

    def staleness(self) -> float:
        """Seconds the served snapshot has lagged the store (0 when current)."""
        since = self.seen_since
        return 0.0 if since is None or self.ready else time.time() - since

    # ---- the loop ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def poll(self) -> bool:
        """One check: load and swap in a new generation if there is one. True if swapped."""
        with STORE_HANDLES:  # no write of this process holds the file meanwhile (state.py)
            return self._poll()

    def _poll(self) -> bool:
        try:
            seen = generation(self.path)
        except (GalleryError, OSError, KeyError, ValueError, RuntimeError) as exc:
            self._failed(f"cannot read the store's generation: {exc}")
            return False
        if seen != self.seen:
            self.seen = seen
            if self.seen_since is None:
                self.seen_since = time.time()
        snap = self.current
        if snap is not None and snap.generation == seen:
            self.seen_since = None
            return False
        started = time.perf_counter()
        try:
            new = load_snapshot(self.path, snap, self.encoders)
        except GenerationMoved:
            return False  # a writer is committing: the next poll reads its result
        except (GalleryError, OSError, KeyError, ValueError, RuntimeError) as exc:
            self._failed(f"cannot load generation {seen}: {exc}")
            return False
        self.current = new  # the atomic swap: one reference assignment
        self.seen = new.generation
        self.seen_since = None
        self.last_error = None
        self.listener("load_seconds", time.perf_counter() - started)
        self.listener("swap", new)
        log.info("serving generation %s of %s: query model %s, %d live rows", new.generation,
                 self.path, new.active_model, new.live)
        return True

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            log.warning("%s (still serving %s)", reason,
                        self.current.generation if self.current else "nothing")
        self.last_error = reason
        self.listener("load_failed", reason)
