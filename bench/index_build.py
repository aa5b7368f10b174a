"""Index builds through the library at scale: what `gallery reindex` costs on a big store.

    .venv/bin/python bench/index_build.py --rows 10000000 --kinds flat,hnsw,ivfsq8,ivfpq \
        [--queries 200] [--threads 2] [--store /tmp/gallery_index_build/g.h5] \
        [--out bench/results/index_build.json] [--reuse]
    .venv/bin/python bench/index_build.py --report bench/results/index_build_*.json   # the tables

Unlike bench/scale.py (which drives faiss directly on generated vectors), every index
here is built by the library from a real store file (`gallery.index.store_index(store, kind, rebuild=True)`,
the code behind `gallery reindex`), each kind in a fresh child process so its peak RSS
is its own. The store is float16, filled with bench/scale.py's clustered synthetic rows
in enrol calls of 1M rows (created once, reused by later runs). Recall@10 is against
exact search over the store's own vectors (a streaming numpy scan). A kind the library
refuses (not enough memory) is recorded with the refusal line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scale import CHUNK, Data, latency, recall_at_k, rss_gib  # noqa: E402

from gallery.errors import BadInput  # noqa: E402
from gallery.index import sidecar_path  # noqa: E402
from gallery.store import ModelInfo, Store  # noqa: E402
from gallery.store.ranges import live_blocks  # noqa: E402
from gallery.index import store_index  # noqa: E402


def make_store(path: Path, rows: int, data: Data, call_rows: int = 1_000_000) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    per_call = []
    with Store.create(path, ModelInfo(version="v1", dim=data.dim, model_id="synthetic"), dtype="float16") as st:
        for c0 in range(0, rows // CHUNK, call_rows // CHUNK):
            cs = range(c0, min(rows // CHUNK, c0 + call_rows // CHUNK))
            emb = np.concatenate([data.chunk(c) for c in cs])
            start = cs[0] * CHUNK
            t = time.perf_counter()
            st.enroll(emb, [f"r{i}" for i in range(start, start + len(emb))], batch_size=65536)
            per_call.append({"start_row": start, "rows_per_s": len(emb) / (time.perf_counter() - t)})
            print(f"enrolled {start + len(emb):,} rows ({per_call[-1]['rows_per_s']:,.0f} rows/s)", flush=True)
    return {"file_bytes": sum(f.stat().st_size for f in path.iterdir()), "enrol_calls": per_call}


def exact_topk(store: Store, q: np.ndarray, k: int) -> np.ndarray:
    """Streaming exact search over the stored vectors: the recall reference."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for vectors, rows in live_blocks(store, np.flatnonzero(~store.columns()["deleted"])):
        s = q @ vectors.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([best_i, rows[part]], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def rerank_row(st: Store, kind: str, q: np.ndarray, truth: np.ndarray, factor: int) -> dict:
    """`gallery search --rerank`: the library's search with exact re-scoring from the store."""
    from gallery.search import search

    run = lambda queries: search(st, queries, k=10, kind=kind, threshold=-1, rerank=factor)  # noqa: E731
    times = []
    for i in range(min(len(q), 50)):
        t = time.perf_counter()
        run(q[i : i + 1])
        times.append(1000 * (time.perf_counter() - t))
    return {"rerank": factor, "p50_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)),
            "recall@10": recall_at_k(truth, run(q).rows)}


def child(args: argparse.Namespace) -> None:
    """One kind: build through the library, then latency and recall. Prints one JSON line."""
    import faiss

    faiss.omp_set_num_threads(args.threads)
    q, truth = np.load(args.work / "queries.npy"), np.load(args.work / "truth.npy")
    out: dict = {"kind": args.child}
    with Store.open(args.store) as st:
        st.tombstones()  # what search itself reads; rss_before is the open store
        out["rss_before_gib"] = rss_gib()
        t = time.perf_counter()
        try:
            index = store_index(st, kind=args.child, rebuild=not args.reuse)
        except BadInput as exc:
            out["refused"] = str(exc)
            print(json.dumps(out))
            return
        out["build_s"] = time.perf_counter() - t
        out["peak_rss_gib"] = rss_gib("VmHWM")
        out["params"], out["train_rows"] = index.meta["params"], index.meta["train_rows"]
        out["sidecar_bytes"] = sidecar_path(st).stat().st_size
        out["p50_ms"], out["p99_ms"], out["batch_qps"] = latency(index, q, 10, min(len(q), 100))
        out["recall@10"] = recall_at_k(truth, index.search(q, 10)[1])
        if "nprobe" in (index.meta["params"] or {}) and index.meta["params"]["nprobe"]:
            default = index.meta["params"]["nprobe"]
            out["sweep"] = []
            for nprobe in (32, 128, 512):
                index.set_search_params(nprobe=nprobe)
                p50, p99, qps = latency(index, q, 10, min(len(q), 50))
                out["sweep"].append({"nprobe": nprobe, "p50_ms": p50, "p99_ms": p99, "batch_qps": qps,
                                     "recall@10": recall_at_k(truth, index.search(q, 10)[1])})
            index.set_search_params(nprobe=default)
        if args.child in ("ivfsq8", "ivfpq"):
            out["rerank"] = [rerank_row(st, args.child, q, truth, factor) for factor in (4, 16)]
    print(json.dumps(out))


def markdown(paths: list[Path]) -> str:
    """BENCHMARKS.md rows from one or more results JSONs (`--report A.json B.json`)."""
    out = ["| rows | index | build s | peak RSS GiB | index MiB | p50 ms | p99 ms | batch q/s | recall@10 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        res = json.loads(path.read_text())
        for r in res["kinds"]:
            if "refused" in r:
                out.append(f"| {res['rows']:,} | {r['kind']} | refused: {r['refused']} | | | | | | |")
                continue
            out.append(f"| {res['rows']:,} | {r['kind']} | {r['build_s']:.0f} | {r['peak_rss_gib']:.1f} | "
                       f"{r['sidecar_bytes'] / 2**20:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                       f"{r['batch_qps']:.0f} | {r['recall@10']:.3f} |")
            for sw in r.get("sweep", []):
                out.append(f"| | nprobe {sw['nprobe']} | | | | {sw['p50_ms']:.1f} | {sw['p99_ms']:.1f} | "
                           f"{sw['batch_qps']:.0f} | {sw['recall@10']:.3f} |")
            for rr in r.get("rerank", []):
                out.append(f"| | search --rerank {rr['rerank']} | | | | {rr['p50_ms']:.1f} | {rr['p99_ms']:.1f} | "
                           f"| {rr['recall@10']:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", nargs="+", type=Path, help="print the markdown table of results JSONs and exit")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--kinds", default="flat,hnsw,ivfsq8,ivfpq")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--store", type=Path, default=Path("/tmp/gallery_index_build/g.h5"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/index_build.json"))
    ap.add_argument("--reuse", action="store_true", help="search the index already beside the store")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        print(markdown(args.report))
        return
    args.work = args.store.parent
    if args.child:
        return child(args)
    data = Data(512, 0)
    results: dict = {"config": {k: str(v) for k, v in vars(args).items()}, "kinds": []}
    if not args.store.exists():
        results["store"] = make_store(args.store, args.rows, data)
    with Store.open(args.store) as st:
        results["rows"] = st.committed
        results["file_bytes"] = sum(f.stat().st_size for f in args.store.iterdir() if f.name.startswith("seg-"))
        q = data.queries(st.committed, args.queries)
        t = time.perf_counter()
        truth = exact_topk(st, q, 10)
        results["exact_scan_s"] = time.perf_counter() - t
    np.save(args.work / "queries.npy", q)
    np.save(args.work / "truth.npy", truth)
    print(f"exact scan of {results['rows']:,} rows: {results['exact_scan_s']:.1f} s", flush=True)
    for kind in [k for k in args.kinds.split(",") if k]:
        cmd = [sys.executable, __file__, "--child", kind, "--store", str(args.store),
               "--threads", str(args.threads)] + (["--reuse"] if args.reuse else [])
        line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results["kinds"].append(json.loads(line))
        print(line, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # partial results survive a kill
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
