"""What one small enrol call costs as the store grows (the duplicate-id check's share).

    .venv/bin/python bench/enrol_growth.py [--sizes 0,1000000,10000000] [--out bench/results/enrol_growth.json]

Grows one float16 store (dim 16: the per-row metadata, not the vectors, is what a
small enrol re-read; ids `r0`, `r1`, ...) to each size in 500k-row calls, then times,
on a fresh writer each time (open + enrol + close, as `gallery enroll` does): an enrol
of 1 new row and one of 1,000 new rows (median of 3), and a rejected enrol of 1
already-stored id. Growth calls are timed too (rows/s per call). Only the public Store
API is used, so the same script measures older code (PYTHONPATH=<checkout>).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from gallery.errors import BadInput
from gallery.store import ModelInfo, Store

DIM, GROW = 16, 500_000


def timed_call(path: Path, ids: list[str], rng: np.random.Generator) -> float:
    emb = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    t = time.perf_counter()
    with Store.open(path, "a") as st:
        try:
            st.enroll(emb, ids)
        except BadInput:
            pass  # the rejected-duplicate case
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,1000000,10000000")
    ap.add_argument("--workdir", default=None, help="Where the store is built (default: a temp folder).")
    ap.add_argument("--out", default="bench/results/enrol_growth.json")
    a = ap.parse_args()
    sizes = sorted(int(s) for s in a.sizes.split(","))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="enrol_growth_"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "growth.h5"
    rng = np.random.default_rng(0)
    rows, extra, results, grow_rates = 0, 0, [], []
    try:
        Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="bench"), dtype="float16").close()
        for size in sizes:
            while rows < size:
                n = min(GROW, size - rows)
                took = timed_call(path, [f"r{i}" for i in range(rows, rows + n)], rng)
                grow_rates.append({"start": rows + extra, "rows": n, "rows_per_s": n / took})
                rows += n
            row = {"stored": rows + extra}
            for name, count in (("one_row_s", 1), ("thousand_rows_s", 1000)):
                runs = []
                for _ in range(3):
                    runs.append(timed_call(path, [f"x{extra + i}" for i in range(count)], rng))
                    extra += count
                row[name] = float(np.median(runs))
            row["duplicate_rejected_s"] = timed_call(path, ["r0"] if rows else ["x0"], rng)
            results.append(row)
            print(f"{row['stored']:>11,} rows stored: enrol 1 row {row['one_row_s']:.3f} s, 1,000 rows "
                  f"{row['thousand_rows_s']:.3f} s, duplicate rejected {row['duplicate_rejected_s']:.3f} s",
                  flush=True)
    finally:
        shutil.rmtree(path, ignore_errors=True)  # a store is a directory (schema v3)
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {"dim": DIM, "dtype": "float16", "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
           "calls": results, "growth_calls": grow_rates}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
