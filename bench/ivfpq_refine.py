"""Does re-ranking rescue IVF-PQ's recall? (follow-up to bench/scale.py)

    .venv/bin/python bench/ivfpq_refine.py [--rows 100000] [--out bench/results/ivfpq_refine.json]

Same synthetic data, queries and library-default IVF-PQ parameters as bench/scale.py;
compares plain IVF-PQ with faiss IndexRefine re-scoring k_factor x k candidates against
float16 copies of the vectors (IndexScalarQuantizer QT_fp16), and against float32
copies (IndexRefineFlat). Reports memory per row, p50 latency, recall@10 and recall@1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scale import CHUNK, Data, exact_topk, recall_at_k  # noqa: E402

from gallery.index import IndexParams  # noqa: E402


def measure(index, q: np.ndarray, truth: np.ndarray, k: int = 10) -> dict:
    _, got = index.search(q, k)
    times = []
    for i in range(100):
        t = time.perf_counter()
        index.search(q[i : i + 1], k)
        times.append(1000 * (time.perf_counter() - t))
    return {"p50_ms": float(np.median(times)), "recall@10": recall_at_k(truth, got),
            "recall@1": float(np.mean(got[:, 0] == truth[:, 0]))}


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--k-factor", type=int, default=8)
    ap.add_argument("--out", default="bench/results/ivfpq_refine.json")
    a = ap.parse_args()
    faiss.omp_set_num_threads(1)
    data, dim = Data(512, 0), 512
    x = np.concatenate([data.chunk(c) for c in range(a.rows // CHUNK)])
    q = data.queries(a.rows, 1000)
    _, truth = exact_topk(data, a.rows, q, 10)
    p = IndexParams(kind="ivfpq").resolved(a.rows, dim)
    results = {"rows": a.rows, "params": vars(p), "k_factor": a.k_factor, "runs": {}}
    for name in ("ivfpq", "ivfpq+refine fp16", "ivfpq+refine fp32"):
        base = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, p.nlist, p.pq_m, p.pq_bits, faiss.METRIC_INNER_PRODUCT)
        index = base
        if name.endswith("fp16"):
            index = faiss.IndexRefine(base, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                                                      faiss.METRIC_INNER_PRODUCT))
        elif name.endswith("fp32"):
            index = faiss.IndexRefineFlat(base)
        if index is not base:
            index.k_factor = a.k_factor
        t = time.perf_counter()
        index.train(x[: max(40 * p.nlist, CHUNK)])
        index.add(x)
        build = time.perf_counter() - t
        base.nprobe = p.nprobe
        row = {"build_s": build, "bytes_per_row": faiss.serialize_index(index).size / a.rows,
               **measure(index, q, truth)}
        results["runs"][name] = row
        print(name, {k: round(v, 3) for k, v in row.items()}, flush=True)
    Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
