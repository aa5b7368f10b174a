"""Exact GPU search through the library and the CLI on a real store: the library's overhead.

    python bench/gpu_search_store.py [--rows 1000000] [--dim 512] [--queries 8192] [--k 10]
        [--device cuda] [--workdir /tmp/gpu_store] [--out gpu_search_store.json]

A store of `--rows` random unit vectors (float16 rows) is enrolled through the library,
then one run compares, on the same uploaded index:
  raw      TorchFlatIndex.search (the kernel path alone),
  library  gallery.gpu_search.search_store (adds query checks, hit metadata, thresholds),
  upload   gallery.gpu_search.from_store (store -> device, once per process),
  cli      `gallery search-gpu STORE --embeddings q.npy --json` end to end (process start,
           torch import, upload, search, JSON out), for `--cli-queries` queries.
`--device cpu --rows 20000 --dim 64 --queries 256` is the CPU smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gallery import gpu_search
from gpu_search import timed  # bench/gpu_search.py: best of 3 after a warm-up
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store


def make_store(path: Path, rows: int, dim: int, chunk: int = 1 << 18) -> float:
    """Enrol `rows` random unit vectors; returns seconds spent in enrol calls."""
    if path.exists():
        path.unlink()
    Path(str(path) + ".lock").unlink(missing_ok=True)
    took = 0.0
    with Store.create(path, ModelInfo(version="v1", dim=dim, model_id="synthetic"), dtype="float16") as st:
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            x = l2_normalize(np.random.default_rng([0, lo]).standard_normal((n, dim), np.float32))
            t = time.perf_counter()
            st.enroll(x, [f"r{i}" for i in range(lo, lo + n)], batch_size=65536)
            took += time.perf_counter() - t
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=8192)
    ap.add_argument("--cli-queries", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gpu_store"))
    ap.add_argument("--out", type=Path, default=Path("gpu_search_store.json"))
    args = ap.parse_args()

    import torch

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    args.workdir.mkdir(parents=True, exist_ok=True)
    store_path = args.workdir / "store.h5"
    enrol_s = make_store(store_path, args.rows, args.dim)
    q = l2_normalize(np.random.default_rng(1).standard_normal((args.queries, args.dim), np.float32))

    with Store.open(store_path) as st:
        t = time.perf_counter()
        index = gpu_search.from_store(st, device=args.device, query_batch=args.queries)
        sync()
        upload_s = time.perf_counter() - t
        raw_s = timed(lambda: index.search(q, args.k), sync)
        lib_s = timed(lambda: gpu_search.search_store(st, q, k=args.k, index=index), sync)
        # the library's answer must be the raw index's (same rows, in the same order)
        _, raw_rows = index.search(q[:256], args.k)
        lib = gpu_search.search_store(st, q[:256], k=args.k, index=index)
        same_rows = bool(np.array_equal(raw_rows, lib.rows))

    qfile = args.workdir / "queries.npy"
    np.save(qfile, q[: args.cli_queries])
    cmd = [sys.executable, "-m", "cli.main", "search-gpu", str(store_path), "--embeddings", str(qfile),
           "-k", str(args.k), "--device", args.device, "--json"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    cli_s = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)

    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "rows": args.rows,
        "dim": args.dim, "queries": args.queries, "k": args.k, "store_dtype": "float16",
        "enrol_s": round(enrol_s, 2), "enrol_rows_per_s": round(args.rows / enrol_s),
        "upload_s": round(upload_s, 3), "raw_search_s": raw_s, "library_search_s": lib_s,
        "library_over_raw": lib_s / raw_s, "library_rows_equal_raw": same_rows,
        "cli_queries": args.cli_queries, "cli_wall_s": round(cli_s, 2),
        "cli_exit": proc.returncode, "torch": torch.__version__,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'rows':>10} {'enrol r/s':>10} {'upload s':>9} {'raw ms':>8} {'library ms':>10} "
          f"{'lib/raw':>8} {'same':>5} {'cli s':>6}")
    print(f"{args.rows:>10} {result['enrol_rows_per_s']:>10} {upload_s:>9.2f} {raw_s * 1e3:>8.1f} "
          f"{lib_s * 1e3:>10.1f} {lib_s / raw_s:>8.3f} {str(same_rows):>5} {cli_s:>6.1f}")


if __name__ == "__main__":
    main()
