"""Scale benchmark: store size, enrol throughput, index build/memory, latency and recall.

    .venv/bin/python bench/scale.py --sizes 100000,1000000 [--dim 512] [--threads 2]
        [--kinds flat,ivf,ivfpq,hnsw] [--hnsw-max 200000] [--in-memory-max 2000000]
        [--dtypes float32,float16] [--workdir /tmp/gallery_scale] [--out bench/results/scale.json]

Synthetic, clustered unit vectors (so IVF/HNSW face realistic structure): 1024
super-clusters, identities of 2 rows around a centre drawn near one super-cluster,
rows = identity centre + noise. A query (a noisy copy of a row) scores ~0.8 against its
row, ~0.55 against the same person's other row, ~0.2 against the best of the rest (same
super-cluster) and ~0 against unrelated rows: 8 of its 10 true neighbours are other
people with small score gaps, which is what makes ANN recall < 1. (An earlier version
with 10 rows per identity and tighter super-clusters gave recall 1.000 for every index
and setting: too easy to say anything.) Rows are generated chunk by chunk from (seed, chunk), so a 10M gallery
never has to sit in memory: the store is written, the IVF-PQ index filled and the
exact ground truth (streaming top-k over the chunks) computed one chunk at a time.
Kinds that need every float32 vector in RAM (flat, ivf, hnsw) run only up to
--in-memory-max rows, HNSW only up to --hnsw-max (its build on 2 cores takes hours at
10M). Index parameters are the library's defaults (gallery.index.IndexParams) for the
full size; IVF training uses a sample of 40 x nlist rows (faiss's own guidance is
>= 39 per cell) instead of every row, to keep training minutes, not hours.
Prints a table per size and writes JSON (the resolved config included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gallery.index import IndexParams, build
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store

CHUNK = 50_000
PER_ID = 2   # images per identity: most of the 10 nearest are other people, as in a real gallery


@dataclass
class Config:
    sizes: list[int]
    dim: int = 512
    queries: int = 1000
    latency_queries: int = 200
    k: int = 10
    threads: int = 1
    kinds: list[str] = field(default_factory=lambda: ["flat", "ivf", "ivfpq", "hnsw"])
    dtypes: list[str] = field(default_factory=lambda: ["float32", "float16"])
    hnsw_max: int = 200_000
    in_memory_max: int = 2_000_000
    enrol_call_rows: int = 200_000
    seed: int = 0
    workdir: str = "/tmp/gallery_scale"
    out: str = "bench/results/scale.json"


class Data:
    """Deterministic clustered unit vectors, regenerated per chunk."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim, self.seed = dim, seed
        self.supers = l2_normalize(np.random.default_rng([seed, 1 << 30]).normal(size=(1024, dim)))

    def chunk(self, c: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, c])
        n_ids = CHUNK // PER_ID
        sup = rng.integers(0, len(self.supers), n_ids)
        centres = l2_normalize(self.supers[sup] + 2.0 * rng.standard_normal((n_ids, self.dim), np.float32)
                               / np.sqrt(self.dim))
        rows = np.repeat(centres, PER_ID, axis=0)
        rows += 0.65 * rng.standard_normal(rows.shape, np.float32) / np.sqrt(self.dim)
        return l2_normalize(rows)

    def queries(self, n: int, nq: int) -> np.ndarray:
        """Noisy copies of random rows of the first min(n, 4 chunks): a second photo of the person."""
        chunks = min(n // CHUNK, 4)
        base = np.concatenate([self.chunk(c) for c in range(chunks)])
        rng = np.random.default_rng([self.seed, 1 << 31])
        pick = rng.choice(len(base), nq, replace=False)
        noise = 0.65 * rng.standard_normal((nq, self.dim), np.float32) / np.sqrt(self.dim)
        return l2_normalize(base[pick] + noise)


def rss_gib(field: str = "VmRSS") -> float:
    """This process's memory from /proc/self/status: VmRSS now, or VmHWM its own peak
    (ru_maxrss would carry a parent's peak over exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def exact_topk(data: Data, n: int, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Streaming exact top-k (numpy matmul per chunk, merged): the recall reference."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for c in range(n // CHUNK):
        s = q @ data.chunk(c).T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        cand_i = np.concatenate([best_i, part + c * CHUNK], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def recall_at_k(reference: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(reference, got)]))


def bench_store(cfg: Config, data: Data, n: int, dtype: str) -> dict:
    """Enrol n rows into a fresh store in calls of enrol_call_rows; size and throughput."""
    path = Path(cfg.workdir) / f"scale_{n}_{dtype}.h5"
    shutil.rmtree(path, ignore_errors=True)  # a store is a directory (schema v3)
    per_call, total = [], 0.0
    calls = max(1, cfg.enrol_call_rows // CHUNK)
    with Store.create(path, ModelInfo(version="v1", dim=cfg.dim, model_id="synthetic"), dtype=dtype) as st:
        for c0 in range(0, n // CHUNK, calls):
            cs = range(c0, min(n // CHUNK, c0 + calls))
            emb = np.concatenate([data.chunk(c) for c in cs])
            ids = [f"r{i}" for i in range(cs[0] * CHUNK, cs[0] * CHUNK + len(emb))]
            t = time.perf_counter()
            st.enroll(emb, ids, batch_size=65536)
            took = time.perf_counter() - t  # enrol only: generating the vectors is not counted
            total += took
            per_call.append(len(emb) / took)
    t = time.perf_counter()
    with Store.open(path) as st:
        loaded = st.embeddings()
    load_s = time.perf_counter() - t
    size = sum(f.stat().st_size for f in path.iterdir() if f.name.startswith(("seg-", "MANIFEST")))
    del loaded
    shutil.rmtree(path)
    return {"dtype": dtype, "file_bytes": size, "bytes_per_row": size / n, "enrol_s": total,
            "enrol_rows_per_s": n / total, "enrol_first_call_rows_per_s": per_call[0],
            "enrol_last_call_rows_per_s": per_call[-1], "load_all_s": load_s}


def latency(index, q: np.ndarray, k: int, nq: int) -> tuple[float, float, float]:
    times = []
    for i in range(nq):
        t = time.perf_counter()
        index.search(q[i : i + 1], k)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    index.search(q, k)
    qps = len(q) / (time.perf_counter() - t)
    ms = 1000 * np.asarray(times)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), qps


def bench_index(cfg: Config, data: Data, n: int, kind: str, q: np.ndarray, truth: np.ndarray,
                vectors: np.ndarray | None) -> dict:
    p = IndexParams(kind=kind).resolved(n, cfg.dim)
    train_n = n if kind in ("flat", "hnsw") else min(n, max(40 * (p.nlist or 1), CHUNK))
    train_n = -(-train_n // CHUNK) * CHUNK  # whole chunks
    rss0 = rss_gib()
    t = time.perf_counter()
    first = vectors[:train_n] if vectors is not None else np.concatenate(
        [data.chunk(c) for c in range(train_n // CHUNK)])
    index = build(first, np.arange(train_n), p)
    for c in range(train_n // CHUNK, n // CHUNK):  # the rest, added without retraining
        rows = vectors[c * CHUNK : (c + 1) * CHUNK] if vectors is not None else data.chunk(c)
        index.faiss.add_with_ids(rows, np.arange(c * CHUNK, (c + 1) * CHUNK, dtype=np.int64))
    build_s = time.perf_counter() - t
    import faiss

    index_bytes = int(faiss.serialize_index(index.faiss).size)
    rss1 = rss_gib()
    _, got = index.search(q, cfg.k)
    p50, p99, qps = latency(index, q, cfg.k, cfg.latency_queries)
    sweep = knob_sweep(index, kind, q, truth, cfg)
    del index
    return {"kind": kind, "params": asdict(p), "train_rows": train_n, "build_s": build_s,
            "index_bytes": index_bytes, "rss_growth_gib": rss1 - rss0, "p50_ms": p50, "p99_ms": p99,
            "batch_qps": qps, f"recall@{cfg.k}": recall_at_k(truth, got), "sweep": sweep}


def knob_sweep(index, kind: str, q: np.ndarray, truth: np.ndarray, cfg: Config) -> list[dict]:
    """Recall vs latency at cheaper settings than the recall-first defaults."""
    knob = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef_search"}.get(kind)
    if knob is None:
        return []
    out = []
    for value in (8, 32, 128):
        index.set_search_params(**{knob: value})
        _, got = index.search(q, cfg.k)
        p50, p99, qps = latency(index, q, cfg.k, cfg.latency_queries // 2)
        out.append({knob: value, "p50_ms": p50, "p99_ms": p99, "batch_qps": qps,
                    f"recall@{cfg.k}": recall_at_k(truth, got)})
    return out


def run_size(cfg: Config, data: Data, n: int) -> dict:
    out: dict = {"n": n, "dim": cfg.dim, "stores": [], "indexes": [], "skipped": []}
    for dtype in cfg.dtypes:
        out["stores"].append(bench_store(cfg, data, n, dtype))
        log_row(n, out["stores"][-1])
    if not cfg.kinds:
        return out
    q = data.queries(n, cfg.queries)
    t = time.perf_counter()
    _, truth = exact_topk(data, n, q, cfg.k)
    out["ground_truth_s"] = time.perf_counter() - t
    in_mem = n <= cfg.in_memory_max
    vectors = np.concatenate([data.chunk(c) for c in range(n // CHUNK)]) if in_mem else None
    for kind in cfg.kinds:
        if kind != "ivfpq" and not in_mem:
            out["skipped"].append(f"{kind}: needs all {n} float32 vectors in RAM ({n * cfg.dim * 4 / 2**30:.0f} GiB)")
        elif kind == "hnsw" and n > cfg.hnsw_max:
            out["skipped"].append(f"hnsw: build beyond {cfg.hnsw_max} rows takes too long on this machine")
        else:
            out["indexes"].append(bench_index(cfg, data, n, kind, q, truth, vectors))
            log_row(n, out["indexes"][-1])
    return out


def log_row(n: int, row: dict) -> None:
    cells = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                     if k not in ("params", "sweep"))
    sys.stderr.write(f"[n={n}] {cells}\n")
    sys.stderr.flush()


def markdown(results: dict) -> str:
    """BENCHMARKS.md tables from a results JSON (`--report FILE`)."""
    out = ["| rows | dtype | file | bytes/row | enrol rows/s (all) | first call | last call | load all s |",
           "|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for s in run["stores"]:
            out.append(f"| {run['n']:,} | {s['dtype']} | {s['file_bytes'] / 2**30:.2f} GiB | "
                       f"{s['bytes_per_row']:.0f} | "
                       f"{s['enrol_rows_per_s']:,.0f} | {s['enrol_first_call_rows_per_s']:,.0f} | "
                       f"{s['enrol_last_call_rows_per_s']:,.0f} | {s['load_all_s']:.1f} |")
    out += ["", "| rows | index | params | train rows | build s | index MiB | p50 ms | p99 ms | batch q/s "
            "| recall@10 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for i in run["indexes"]:
            p = i["params"]
            knobs = {"ivf": f"nlist {p['nlist']}, nprobe {p['nprobe']}", "hnsw": f"M {p['hnsw_m']}, efC "
                     f"{p['ef_construction']}, efS {p['ef_search']}", "flat": "-"}.get(
                i["kind"], f"nlist {p['nlist']}, nprobe {p['nprobe']}, m {p['pq_m']} x {p['pq_bits']} bits")
            out.append(f"| {run['n']:,} | {i['kind']} | {knobs} | {i['train_rows']:,} | {i['build_s']:.1f} | "
                       f"{i['index_bytes'] / 2**20:,.0f} | {i['p50_ms']:.1f} | {i['p99_ms']:.1f} | "
                       f"{i['batch_qps']:.0f} | {i['recall@10']:.3f} |")
            for sw in i.get("sweep", []):
                knob = "nprobe" if "nprobe" in sw else "ef_search"
                out.append(f"| | {i['kind']} | {knob} {sw[knob]} | | | | {sw['p50_ms']:.1f} | {sw['p99_ms']:.1f} | "
                           f"{sw['batch_qps']:.0f} | {sw['recall@10']:.3f} |")
        for note in run["skipped"]:
            out.append(f"| {run['n']:,} | not run | {note} | | | | | | | |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", help="print the markdown tables of a results JSON and exit")
    ap.add_argument("--sizes", default="100000,1000000")
    for name, default in (("dim", 512), ("queries", 1000), ("threads", 1), ("hnsw-max", 200_000),
                          ("latency-queries", 200), ("enrol-call-rows", 200_000),
                          ("in-memory-max", 2_000_000), ("seed", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--kinds", default="flat,ivf,ivfpq,hnsw")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--workdir", default="/tmp/gallery_scale")
    ap.add_argument("--out", default="bench/results/scale.json")
    a = ap.parse_args()
    if a.report:
        print(markdown(json.loads(Path(a.report).read_text())))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    if any(s % CHUNK for s in sizes):
        ap.error(f"sizes must be multiples of {CHUNK}")
    cfg = Config(sizes=sizes, dim=a.dim, queries=a.queries, latency_queries=a.latency_queries,
                 threads=a.threads, hnsw_max=a.hnsw_max, enrol_call_rows=a.enrol_call_rows,
                 in_memory_max=a.in_memory_max, seed=a.seed, kinds=[k for k in a.kinds.split(",") if k],
                 dtypes=[d for d in a.dtypes.split(",") if d], workdir=a.workdir, out=a.out)
    import faiss

    faiss.omp_set_num_threads(cfg.threads)
    os.makedirs(cfg.workdir, exist_ok=True)
    data = Data(cfg.dim, cfg.seed)
    results = {"config": asdict(cfg), "faiss": faiss.__version__, "cpus": os.cpu_count(), "runs": []}
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        results["runs"].append(run_size(cfg, data, n))
        Path(cfg.out).write_text(json.dumps(results, indent=2))  # partial results survive a kill
    results["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    Path(cfg.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results["runs"], indent=1))
    shutil.rmtree(cfg.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
