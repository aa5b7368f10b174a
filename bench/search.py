"""Overhead of the gallery search API over the raw faiss call on the same index.

Builds a store of N x D random unit vectors (default 100k x 512), then times, on
the same faiss index and the same queries:
  raw: index.faiss.search(unit_queries, k)                     (faiss alone)
  api: search(store, raw_queries, k)  (normalise, freshness check, faiss, tombstone
       filter, ids / identities / model versions, thresholds)
  gallery: gallery.open(path).search(raw_queries, k)  (the front door: the same, through a
       Gallery that keeps its read handle and index between searches)
and prints the ratios api/raw and gallery/raw (target <= 1.05). Writes the numbers as JSON.

    .venv/bin/python bench/search.py                     # 100k x 512, 1k queries, flat
    .venv/bin/python bench/search.py --kinds flat,ivf,hnsw --rows 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import gallery
from gallery.preprocess import l2_normalize
from gallery.search import assemble, prepare_queries
from gallery.store import ModelInfo, Store
from gallery.index import store_index
from gallery.search import search


def make_store(path: Path, rows: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with Store.create(path, ModelInfo(version="v1", dim=dim, model_id="bench")) as store:
        for lo in range(0, rows, 20_000):  # bounded memory while generating
            x = rng.standard_normal((min(20_000, rows - lo), dim), dtype=np.float32)
            ids = [f"item{i}" for i in range(lo, lo + len(x))]
            store.enroll(x, ids, [f"person{i // 10}" for i in range(lo, lo + len(x))], batch_size=10_000)


def time_pair(store: Store, front: gallery.Gallery, queries: np.ndarray, k: int, kind: str, repeats: int) -> dict:
    index = store_index(store, kind=kind)
    unit = l2_normalize(queries)
    times: dict[str, list[float]] = {"raw": [], "api": [], "gallery": []}
    search(store, queries, k=k, kind=kind)
    front.search(queries, k=k, index=kind)
    index.faiss.search(unit, k)  # warm every path
    order = ("raw", "api", "gallery")
    for rep in range(repeats):  # interleaved, order rotating, so machine load hits each alike
        for which in order[rep % 3:] + order[:rep % 3]:
            t0 = time.perf_counter()
            if which == "raw":
                index.faiss.search(unit, k)
            elif which == "api":
                result = search(store, queries, k=k, kind=kind)
            else:
                front_result = front.search(queries, k=k, index=kind)
            times[which].append(time.perf_counter() - t0)
    raw_scores, raw_rows = index.faiss.search(unit, k)
    assert np.array_equal(result.rows, raw_rows), "API and faiss disagree"
    assert np.array_equal(front_result.rows, raw_rows), "Gallery and faiss disagree"
    raw_times, api_times = times["raw"], times["api"]
    raw, api, front_s = (statistics.median(times[w]) for w in order)
    overhead = statistics.median(own_work(store, queries, raw_scores, raw_rows, kind) for _ in range(repeats))
    return {"kind": kind, "raw_s": raw, "api_s": api, "ratio": api / raw,
            "gallery_s": front_s, "gallery_ratio": front_s / raw,
            "raw_min_s": min(raw_times), "api_min_s": min(api_times), "repeats": repeats,
            "own_work_s": overhead, "ratio_from_own_work": (raw + overhead) / raw}


def own_work(store: Store, queries: np.ndarray, scores: np.ndarray, rows: np.ndarray, kind: str) -> float:
    """Everything gallery.search.search does besides the faiss call, timed alone (immune to CPU noise
    that swamps a 1% difference between two multi-second faiss calls on a shared machine)."""
    t0 = time.perf_counter()
    version = store.resolve_version(store.active_model)
    prepare_queries(queries, store.dim)
    store_index(store, kind=kind)  # freshness check against the cached index
    assemble(store, version, scores, rows, None)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--kinds", default="flat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/search.json"))
    args = parser.parse_args()

    queries = np.random.default_rng(args.seed + 1).standard_normal((args.queries, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        make_store(path, args.rows, args.dim, args.seed)
        enrol_s = time.perf_counter() - t0
        with Store.open(path) as store, gallery.open(path) as front:
            results = [time_pair(store, front, queries, args.k, kind, args.repeats)
                       for kind in args.kinds.split(",")]
    report = {"rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k,
              "enrol_s": enrol_s, "results": results, "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    print(f"gallery search API vs raw faiss: {args.rows} x {args.dim}, {args.queries} queries, k={args.k}")
    print(f"{'index':<8}{'raw faiss s':>14}{'search s':>16}{'ratio':>8}{'Gallery s':>11}{'ratio':>8}"
          f"{'own work s':>12}{'ratio (own)':>13}")
    for r in results:
        print(f"{r['kind']:<8}{r['raw_s']:>14.4f}{r['api_s']:>16.4f}{r['ratio']:>8.3f}{r['gallery_s']:>11.4f}"
              f"{r['gallery_ratio']:>8.3f}{r['own_work_s']:>12.4f}{r['ratio_from_own_work']:>13.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
