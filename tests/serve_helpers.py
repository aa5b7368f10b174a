"""Shared helpers of the service tests: a store of random embeddings, the service on a
loopback port (in a thread, or as a `gallery serve` process), waiting for it to be ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from gallery.store import ModelInfo, Store
from gallery.index import store_index

REPO = Path(__file__).resolve().parents[1]
WAIT = 60.0  # seconds a service may take to start on a loaded CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(path: Path, rows: int = 300, dim: int = 16, identities: int = 30, seed: int = 0,
               threshold: float | None = 0.5) -> np.ndarray:
    """Embedding-only store (model v1) of random unit rows `i<n>` of identity `p<n % identities>`."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((rows, dim)).astype(np.float32)
    with Store.create(path, ModelInfo(version="v1", dim=dim, model_id="random-v1")) as st:
        st.enroll(emb, [f"i{n}" for n in range(rows)], [f"p{n % identities}" for n in range(rows)])
        if threshold is not None:
            st.set_threshold("v1", "v1", threshold)
        store_index(st)  # the sidecar in-process searches and the service both read
    return emb


class ServerThread:
    """The app under uvicorn on 127.0.0.1 in a background thread (signals stay with pytest)."""

    def __init__(self, config) -> None:
        import uvicorn

        from gallery.serve.server import uvicorn_config

        config.port = config.port if config.port not in (0, 8080) else free_port()
        self.config = config
        self.server = uvicorn.Server(uvicorn_config(config, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{config.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        wait_ready(self.url, headers=auth(self.config.api_key))
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def auth(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def wait_ready(url: str, headers: dict | None = None, process: subprocess.Popen | None = None,
               timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"service exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready after {timeout} s")


def start_process(store: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`gallery serve STORE --port P ARGS` as a child process, once ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(store), "--port", str(port), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process=proc)
    return proc, url
