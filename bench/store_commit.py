"""What the crash-safe store costs: enrol throughput, cold open, a 1-row enrol into N rows
(without and with an index sidecar to catch up), search p50, the first search on a new
handle (sidecar load), compaction, through the public Store API only, so the same script
measures the single-file layout (run it with an older gallery on PYTHONPATH) and the
directory layout. store_bytes counts the index sidecar in the directory layout (it lives
inside the store directory), not in the single-file layout (a file beside the store).

    .venv/bin/python bench/store_commit.py --rows 100000 [--dim 512] [--no-fsync] [--label after]
        [--out bench/results/store_commit_after_100k.json]

Each measurement runs in a fresh child process where it matters (cold open, 1-row enrol),
with the page cache warm (the store was just written): "cold" means a new process, not a
cold disk. Prints one row and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CALL_ROWS = 100_000
CHILD = r"""
import sys, time, json
t0 = time.perf_counter()
import numpy as np
from gallery.store import Store
t1 = time.perf_counter()
path, what, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
if what == "open":
    t = time.perf_counter()
    with Store.open(path) as st:
        n = st.count()
    print(json.dumps({"open_count_s": time.perf_counter() - t, "rows": n}))
elif what == "enrol1":
    x = np.random.default_rng(123).normal(size=(1, dim)).astype(np.float32)
    t = time.perf_counter()
    with Store.open(path, "a") as st:
        st.enroll(x, ["one-more-%d" % time.time_ns()])
        # Catch an existing index sidecar up, as the writers above the store do (Gallery.enroll;
        # the single-file store's enroll did it itself, and then this finds it fresh).
        from gallery.index import refresh_after_write
        refresh_after_write(st)
    print(json.dumps({"enrol_1_row_s": time.perf_counter() - t}))
"""


def child(path: Path, what: str, dim: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), what, str(dim)], capture_output=True,
                         text=True, env=os.environ, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--label", default="")
    ap.add_argument("--no-fsync", action="store_true", help="GALLERY_NO_FSYNC=1 (directory layout only)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.no_fsync:
        os.environ["GALLERY_NO_FSYNC"] = "1"
    import gallery
    from gallery.search import search
    from gallery.store import ModelInfo, Store

    work = Path(a.workdir or tempfile.mkdtemp(prefix="store-commit-"))
    path = work / "g.h5"
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    rng = np.random.default_rng(0)
    result: dict = {"label": a.label, "rows": a.rows, "dim": a.dim, "gallery": str(Path(gallery.__file__).parent),
                    "no_fsync": a.no_fsync, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    enrol_s = 0.0
    with Store.create(path, ModelInfo(version="v1", dim=a.dim, model_id="bench")) as st:
        for lo in range(0, a.rows, CALL_ROWS):
            n = min(CALL_ROWS, a.rows - lo)
            x = rng.normal(size=(n, a.dim)).astype(np.float32)
            t = time.perf_counter()
            st.enroll(x, [f"r{i}" for i in range(lo, lo + n)], batch_size=65536)
            enrol_s += time.perf_counter() - t
    result["enrol_rows_per_s"] = a.rows / enrol_s
    result.update(child(path, "open", a.dim))
    result["enrol_1_row_s"] = statistics.median(child(path, "enrol1", a.dim)["enrol_1_row_s"] for _ in range(3))
    with Store.open(path, "a") as st:  # before the index exists: each small enrol would catch it up
        if hasattr(st, "compact"):
            for i in range(50):
                st.enroll(rng.normal(size=(1, a.dim)).astype(np.float32), [f"small{i}"])
            t = time.perf_counter()
            done = st.compact()
            result["compact_50_small_s"] = time.perf_counter() - t
            result["compact_result"] = done
    q = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
    with Store.open(path) as st:
        t = time.perf_counter()
        search(st, q[:1], k=10, kind="flat")  # builds the flat index and saves its sidecar
        result["first_search_builds_index_s"] = time.perf_counter() - t
        times = []
        for i in range(a.queries):
            t = time.perf_counter()
            search(st, q[i : i + 1], k=10, kind="flat")
            times.append(time.perf_counter() - t)
    result["search_p50_ms"] = 1000 * statistics.median(times)
    with Store.open(path) as st:  # a new handle: sidecar loaded from disk (checksum checked in v3)
        t = time.perf_counter()
        search(st, q[:1], k=10, kind="flat")
        result["first_search_new_handle_s"] = time.perf_counter() - t
    # A 1-row enrol into a store that has an index sidecar: the writer catches the sidecar up
    # (loads it, adds the row, saves a new file), as a served store's enrols do.
    result["enrol_1_row_with_index_s"] = child(path, "enrol1", a.dim)["enrol_1_row_s"]
    result["store_bytes"] = sum(f.stat().st_size for f in path.iterdir()) if path.is_dir() else path.stat().st_size
    result["load_avg_end"] = os.getloadavg()
    print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                     if k not in ("compact_result", "gallery")))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
