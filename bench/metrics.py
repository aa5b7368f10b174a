"""Speed of the compatibility metrics at the sizes the checker promises.

    .venv/bin/python bench/metrics.py [--dim 128] [--repeat 3] [--out bench/metrics.json]

1:1: 1M pairs (pair scoring from embeddings, TAR@FAR at six FARs, ROC AUC, full ROC).
1:N: 10k probes x 10k gallery (chunked search + CMC + open-set TPIR@FPIR, and mAP).
Prints a table (best of --repeat wall times) and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from gallery.compat.protocols import PairProtocol
from gallery.metrics.identification import identification_report, search_stats
from gallery.metrics.retrieval import mean_average_precision
from gallery.metrics.verification import auc_score, roc_curve, tar_at_far
from gallery.preprocess import l2_normalize


def _clustered(rng, n_items, n_ids, dim, noise=1.0):
    labels = rng.integers(0, n_ids, n_items)
    centres = rng.normal(size=(n_ids, dim)).astype(np.float32)
    return l2_normalize(centres[labels] + noise * rng.normal(size=(n_items, dim)).astype(np.float32)), labels


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def bench(dim: int, repeat: int) -> list[dict]:
    from gallery.compat.checker import _pair_scores

    rng = np.random.default_rng(0)
    rows = []
    emb, labels = _clustered(rng, 20_000, 2_000, dim)
    left, right = rng.integers(0, 20_000, 1_000_000), rng.integers(0, 20_000, 1_000_000)
    pairs = PairProtocol(left, right, labels[left] == labels[right])
    # real genuine pairs are ~1% of a 1M-pair protocol; random pairs give ~0.05%, so add some
    pairs.issame[: 10_000] = True
    t, scores = _best(lambda: _pair_scores(emb, emb, pairs), repeat)
    rows.append({"task": "1:1 pair scores", "size": f"1M pairs, d={dim}", "seconds": t})
    genuine, impostor = scores[pairs.issame], scores[~pairs.issame]
    t, _ = _best(lambda: tar_at_far(genuine, impostor), repeat)
    rows.append({"task": "1:1 TAR@FAR (6 FARs)", "size": "1M scores", "seconds": t})
    t, _ = _best(lambda: auc_score(genuine, impostor), repeat)
    rows.append({"task": "1:1 ROC AUC", "size": "1M scores", "seconds": t})
    t, _ = _best(lambda: roc_curve(genuine, impostor), repeat)
    rows.append({"task": "1:1 full ROC curve", "size": "1M scores", "seconds": t})

    gallery, g_labels = _clustered(rng, 10_000, 10_000, dim, noise=0.0)
    g_labels = np.arange(10_000)
    p_labels = np.r_[rng.integers(0, 10_000, 8_000), np.arange(10_000, 12_000)]  # 2k non-mated
    centres = np.r_[gallery, rng.normal(size=(2_000, dim)).astype(np.float32)]
    idx = np.where(p_labels < 10_000, p_labels, 10_000 + (p_labels - 10_000))
    probes = l2_normalize(centres[idx] + 0.08 * rng.normal(size=(10_000, dim)).astype(np.float32))

    def one_to_n():
        stats = search_stats(probes, gallery, p_labels, g_labels)
        return identification_report(stats)

    t, report = _best(one_to_n, repeat)
    rows.append({"task": "1:N search + CMC + TPIR@FPIR", "size": f"10k x 10k, d={dim}", "seconds": t,
                 "rank1": report["rank1"]})
    t, (m, _) = _best(lambda: mean_average_precision(probes, gallery, p_labels, g_labels), repeat)
    rows.append({"task": "1:N mAP", "size": f"10k x 10k, d={dim}", "seconds": t, "map": m})
    rows.append(_bench_checker(rng, dim))
    return rows


def _bench_checker(rng, dim: int) -> dict:
    """The whole check from precomputed embeddings: 3 comparisons, 1:1 + 1:N + mAP each."""
    import tempfile

    import h5py

    from gallery.compat.checker import CheckConfig, run_check

    labels = np.repeat(np.arange(10_000), 2)
    centres = rng.normal(size=(10_000, dim)).astype(np.float32)
    old = centres[labels] + 0.9 * rng.normal(size=(20_000, dim)).astype(np.float32)
    new = centres[labels] + 0.6 * rng.normal(size=(20_000, dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/emb.h5"
        with h5py.File(path, "w") as handle:
            handle["old"], handle["new"], handle["labels"] = old, new, labels
        start = time.perf_counter()
        result = run_check(CheckConfig(embeddings=path, impostor_pairs=1_000_000))
        seconds = time.perf_counter() - start
    search = result.report["protocol"]["search"]
    size = f"1M pairs + {search['num_mated_probes'] + search['num_nonmated_probes']} x {search['gallery_size']}"
    return {"task": "run_check from embeddings (3 comparisons)", "size": size, "seconds": seconds,
            "new_to_old_rank1": result.report["criterion"]["new_to_old"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/metrics.json"))
    args = parser.parse_args()
    rows = bench(args.dim, args.repeat)
    width = max(len(r["task"]) for r in rows)
    print(f"{'task':<{width}}  {'size':<26} seconds")
    for r in rows:
        print(f"{r['task']:<{width}}  {r['size']:<26} {r['seconds']:.3f}")
    meta = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "repeat": args.repeat, "load_avg": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
