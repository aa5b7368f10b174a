"""Library search (`gallery.search.search`) on a big store's existing index: nprobe x --rerank.

    .venv/bin/python bench/rerank_at_scale.py --store /tmp/s2/big/g.h5 --out bench/results/index_build_10m_rerank.json

Uses the queries.npy / truth.npy that bench/index_build.py left beside the store.
"""
import argparse
import json, time, numpy as np, sys
sys.path.insert(0, "bench")
from scale import recall_at_k
from gallery.store import Store
from gallery.search import search
from gallery.index import store_index
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--store", default="/tmp/gallery_index_build/g.h5")
ap.add_argument("--out", default="bench/results/rerank_at_scale.json")
args = ap.parse_args()
work = args.store.rsplit("/", 1)[0]
q = np.load(f"{work}/queries.npy"); truth = np.load(f"{work}/truth.npy")
out = []
with Store.open(args.store) as st:
    t = time.perf_counter(); store_index(st); load = time.perf_counter() - t
    for nprobe in (32, 128):
        for rerank in (None, 4):
            run = lambda x: search(st, x, k=10, threshold=-1, nprobe=nprobe, rerank=rerank)
            times = []
            for i in range(50):
                t = time.perf_counter(); run(q[i:i+1]); times.append(1000 * (time.perf_counter() - t))
            out.append({"nprobe": nprobe, "rerank": rerank, "p50_ms": float(np.median(times)),
                        "recall@10": recall_at_k(truth, run(q).rows)})
            print(out[-1], flush=True)
json.dump({"index_load_s": load, "rows": out}, open(args.out, "w"), indent=2)
print("load", load)
