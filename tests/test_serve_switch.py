"""Switch under load: a client sends >= 2,000 search requests at concurrency 8 (3 in 4 JSON
embeddings, 1 in 4 multipart images) while another process runs upgrade -> rollback five
times and a last upgrade. No request may fail, every response names v1 or v2, and every
request sent at least 1 s after a switch returned is answered by the new query model."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from gallery.serve.config import ServeConfig
from serve_helpers import REPO, ServerThread

pytest.importorskip("torch")
from cli_helpers import ok, upgraded_store  # noqa: E402

REQUESTS, CONCURRENCY, CYCLES = 2000, 8, 5
DWELL = 2.0      # seconds between switches: each new model serves long enough to be checked
SETTLE = 1.0     # the bound: a switch is visible to every request sent this long after it

WRITER = r'''
import json, sys, time
from gallery.rollout import rollback, upgrade
store, model, report, dwell, cycles = sys.argv[1:4] + [float(sys.argv[4]), int(sys.argv[5])]
for step in ["upgrade", "rollback"] * cycles + ["upgrade"]:
    time.sleep(dwell)
    start = time.time()
    result = upgrade(store, model, report) if step == "upgrade" else rollback(store)
    print(json.dumps({"step": step, "start": start, "at": time.time(), "to": result["to"]}), flush=True)
time.sleep(dwell)  # the last model serves a while too
'''


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("switch")
    path = upgraded_store(root, "g.h5", per_class=2, eval_per_class=4, impostor_pairs=500)
    ok("rollback", path)  # start on v1; v2 is registered with its thresholds
    return root, path


def test_switch_under_load(store):
    root, path = store
    probes = sorted((root / "images").rglob("*.png"))[:8]
    images = [p.read_bytes() for p in probes]
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((16, 16)).astype(np.float32).tolist()
    responses: list[tuple[float, int, str | None, str]] = []  # (sent, status, version, error)
    lock = threading.Lock()
    tickets = itertools.count()
    writer_done = threading.Event()
    interval = (2 * CYCLES + 1) * (DWELL + 0.3) / REQUESTS  # spread the requests over the switching

    with ServerThread(ServeConfig(path, port=0)) as srv:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(root / "v2.onnx"),
                                   str(root / "report.json"), str(DWELL), str(CYCLES)],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        start = time.time()

        def client() -> None:
            with httpx.Client(base_url=srv.url, timeout=60) as http:
                while True:
                    ticket = next(tickets)
                    if ticket >= REQUESTS and writer_done.is_set():
                        return
                    time.sleep(max(0.0, start + ticket * interval - time.time()))
                    sent = time.time()
                    try:
                        if ticket % 4 == 3:
                            r = http.post("/v1/search", files={"image": ("q.png", images[ticket % 8], "image/png")},
                                          data={"k": "3"})
                        else:
                            r = http.post("/v1/search", json={"embeddings": [queries[ticket % 16]], "k": 3})
                        row = (sent, r.status_code, r.json().get("model_version"), r.text[:200])
                    except (httpx.HTTPError, ValueError) as exc:
                        row = (sent, 0, None, repr(exc))
                    with lock:
                        responses.append(row)

        clients = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
        for c in clients:
            c.start()
        out, err = writer.communicate(timeout=600)
        writer_done.set()
        for c in clients:
            c.join(timeout=120)
    assert writer.returncode == 0, err
    switches = [json.loads(line) for line in out.splitlines()]
    assert [s["to"] for s in switches] == ["v2", "v1"] * CYCLES + ["v2"]

    failed = [r for r in responses if r[1] != 200]
    assert len(responses) >= REQUESTS and not failed, failed[:5]
    assert {r[2] for r in responses} <= {"v1", "v2"}
    for this, following in zip(switches, switches[1:] + [{"start": float("inf")}]):
        window = [r for r in responses if this["at"] + SETTLE <= r[0] < following["start"]]
        assert window, f"no request in the settled window after switch {this}"
        stale = [r for r in window if r[2] != this["to"]]
        assert not stale, f"{len(stale)} requests sent {SETTLE} s after the switch to {this['to']} " \
                          f"answered by {stale[0][2]}"
