"""Where to serve: the store's own search vs milvus-lite vs Qdrant local, same vectors.

One store of N x D clustered unit vectors (bench/scale.py's generator: identities with
2 photos each, queries = a noisy second photo), then, through the library on every side
(`gallery.search.search` vs `gallery.engines.search`, both returning the same SearchResult):
  gallery  flat / ivf / hnsw at the store's defaults (index build time);
  milvus   milvus-lite, one collection per index type (FLAT, IVF_FLAT, IVF_SQ8, HNSW)
           filled by `gallery.engines.sync` (ingest = sync incl. the engine's index build),
           searched at two settings of its knob;
  qdrant   local mode in memory (it persists nothing; a local-mode folder commits each point
           to SQLite on its own: its rate is measured separately on --qdrant-disk-rows rows).
Per setting: recall@k against exact search, p50/p99 of single-query calls, throughput of
one batch call of all queries. Prints a table and writes JSON.

    .venv/bin/python bench/engines.py                          # 100k x 512
    .venv/bin/python bench/engines.py --rows 20000 --dim 128   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

# Every side runs in this process (milvus-lite's server is in-process faiss, Qdrant local is
# numpy): one thread count for all, set before numpy/faiss start their pools.
THREADS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import CHUNK, Data, exact_topk, recall_at_k, rss_gib  # noqa: E402

from gallery import engines  # noqa: E402
from gallery.store import ModelInfo, Store  # noqa: E402
from gallery.index import store_index  # noqa: E402
from gallery.search import search  # noqa: E402

MILVUS_SETTINGS = {"FLAT": [{}], "IVF_FLAT": [{"nprobe": 16}, {"nprobe": 64}],
                   "IVF_SQ8": [{"nprobe": 16}, {"nprobe": 64}], "HNSW": [{"ef": 64}, {"ef": 256}]}


def timed_search(search, queries: np.ndarray, truth: np.ndarray, k: int, single: int) -> dict:
    """recall@k (one batch call of every query), p50/p99 ms of `single` one-query calls, batch qps."""
    search(queries[:2])  # warm
    t = time.perf_counter()
    got = search(queries)
    batch_s = time.perf_counter() - t
    times = []
    for i in range(single):
        t = time.perf_counter()
        search(queries[i : i + 1])
        times.append(1000 * (time.perf_counter() - t))
    return {f"recall@{k}": recall_at_k(truth, got.rows), "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)), "batch_qps": len(queries) / batch_s}


def make_store(path: Path, data: Data, n: int, dim: int) -> float:
    t = time.perf_counter()
    with Store.create(path, ModelInfo(version="v1", dim=dim, model_id="bench")) as st:
        for c in range(n // CHUNK):
            st.enroll(data.chunk(c), [f"r{i}" for i in range(c * CHUNK, (c + 1) * CHUNK)], batch_size=CHUNK)
    return time.perf_counter() - t


def bench_gallery(path: Path, kinds: list[str], q: np.ndarray, truth: np.ndarray, args) -> list[dict]:
    out = []
    with Store.open(path) as st:
        for kind in kinds:
            t = time.perf_counter()
            store_index(st, kind=kind, rebuild=True)
            build_s = time.perf_counter() - t
            row = {"side": "gallery", "index": kind, "setting": "defaults", "build_s": build_s,
                   **timed_search(lambda x: search(st, x, k=args.k, kind=kind), q, truth, args.k, args.single)}
            out.append(row)
            print_row(row)
    return out


def bench_engine(kind: str, uri: str, path: Path, index: str, settings: list[dict], q: np.ndarray,
                 truth: np.ndarray, args) -> list[dict]:
    out = []
    alias = f"bench_{index.lower()}"
    with Store.open(path, "a") as st, engines.connect(kind, uri) as eng:
        rss0 = rss_gib()
        t = time.perf_counter()
        engines.sync(st, eng, collection=alias, batch=args.batch, index=index)
        ingest_s = time.perf_counter() - t
        rss1 = rss_gib()
        for params in settings:
            row = {"side": kind, "index": index if kind == "milvus" else "local (exact)",
                   "setting": ", ".join(f"{k}={v}" for k, v in params.items()) or "-", "build_s": ingest_s,
                   "rss_growth_gib": rss1 - rss0,
                   **timed_search(lambda x: engines.search(eng, alias, x, k=args.k, params=params or None),
                                  q, truth, args.k, args.single)}
            out.append(row)
            print_row(row)
    return out


def qdrant_disk_rate(data: Data, workdir: Path, rows: int, dim: int) -> dict:
    """Points per second a Qdrant local-mode *folder* ingests (one SQLite commit per point)."""
    path = workdir / "small.h5"
    with Store.create(path, ModelInfo(version="v1", dim=dim, model_id="bench")) as st:
        st.enroll(data.chunk(0)[:rows], [f"r{i}" for i in range(rows)])
        with engines.connect("qdrant", str(workdir / "qdrant_disk")) as eng:
            t = time.perf_counter()
            engines.sync(st, eng, collection="disk", batch=500)
            took = time.perf_counter() - t
    return {"rows": rows, "ingest_s": took, "rows_per_s": rows / took}


def print_row(row: dict) -> None:
    k = next(key for key in row if key.startswith("recall@"))
    print(f"{row['side']:8s} {row['index']:14s} {row['setting']:10s} build/ingest {row['build_s']:8.1f} s  "
          f"{k} {row[k]:.3f}  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
          f"batch {row['batch_qps']:8.0f} q/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="batch call size and recall sample")
    ap.add_argument("--single", type=int, default=200, help="one-query calls timed for p50/p99")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2000, help="rows per engine request during sync")
    ap.add_argument("--gallery-kinds", default="flat,ivf,hnsw")
    ap.add_argument("--milvus-indexes", default="FLAT,IVF_FLAT,IVF_SQ8,HNSW")
    ap.add_argument("--qdrant-disk-rows", type=int, default=2000)
    ap.add_argument("--threads=", dest="threads", default="1", metavar="N",
                    help="threads for faiss/BLAS on every side (write --threads=N)")
    ap.add_argument("--workdir", default="/tmp/gallery_engines_bench")
    ap.add_argument("--out", default="bench/results/engines.json")
    args = ap.parse_args()
    if args.rows % CHUNK:
        ap.error(f"--rows must be a multiple of {CHUNK}")
    import faiss

    faiss.omp_set_num_threads(int(THREADS))
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    data = Data(args.dim, seed=0)
    path = workdir / "g.h5"
    enrol_s = make_store(path, data, args.rows, args.dim)
    q = data.queries(args.rows, args.queries)
    truth = exact_topk(data, args.rows, q, args.k)[1]
    print(f"{args.rows} x {args.dim}, {args.queries} queries, k={args.k}; store enrolled in {enrol_s:.1f} s")
    rows = bench_gallery(path, args.gallery_kinds.split(","), q, truth, args)
    for index in filter(None, args.milvus_indexes.split(",")):
        rows += bench_engine("milvus", str(workdir / f"milvus_{index.lower()}.db"), path, index,
                             MILVUS_SETTINGS.get(index, [{}]), q, truth, args)
    rows += bench_engine("qdrant", ":memory:", path, "HNSW", [{}], q, truth, args)
    disk = qdrant_disk_rate(data, workdir, args.qdrant_disk_rows, args.dim) if args.qdrant_disk_rows else None
    if disk:
        print(f"qdrant local folder ingest: {disk['rows']} rows in {disk['ingest_s']:.1f} s "
              f"({disk['rows_per_s']:.0f} rows/s)")
    result = {"rows": args.rows, "dim": args.dim, "queries": args.queries, "single": args.single, "k": args.k,
              "sync_batch": args.batch, "threads": int(THREADS), "enrol_s": enrol_s, "results": rows, "qdrant_disk": disk,
              "peak_rss_gib": rss_gib("VmHWM"), "machine": platform.platform(), "python": platform.python_version(),
              "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
