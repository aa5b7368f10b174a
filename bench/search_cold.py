"""Cold `gallery search`: a fresh process per call (imports, open, index load, search, JSON).

    .venv/bin/python bench/search_cold.py [--rows 1000000] [--dim 128] [--queries 10] [-k 10]
        [--repeats 3] [--before REV] [--workdir DIR] [--out bench/results/search_cold.json]

Builds a float16 store of --rows synthetic unit rows (500k-row enrols; ids `item-<n>`,
identities `person-<n % 100000>`, every 1000th row removed) with its default index
sidecar, built once outside the timings, and --queries query vectors; a --workdir that
already holds them is reused. Then times `gallery search STORE --embeddings q.npy -k K
--json` --repeats times (after one untimed call) for this checkout ("after") and, with
--before REV, for `git archive REV` unpacked to a temp folder (on PYTHONPATH): the same
store and index files. Reports the median wall time and the child's peak RSS, and whether
the trees' JSON answers are identical, and the time of one store.columns() (every row's
metadata decoded: what each search paid before; export, verify still do). The files sit in the OS page cache after the
untimed call: a cold process, not a cold disk.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store
from gallery.index import store_index

ROOT = Path(__file__).resolve().parents[1]
ENROL_CALL, CHUNK = 500_000, 50_000
CLI = "from cli.main import main; main()"
COLUMNS = ("import sys, time; from gallery.store import Store; st = Store.open(sys.argv[1]); "
           "t = time.perf_counter(); st.columns(); print(time.perf_counter() - t)")


def build(path: Path, queries: Path, rows: int, dim: int, nq: int) -> None:
    """The store (float16), its default index sidecar and the query file, unless present."""
    rng = np.random.default_rng(0)
    if not path.exists():
        t = time.perf_counter()
        with Store.create(path, ModelInfo(version="v1", dim=dim, model_id="bench"), dtype="float16") as st:
            for lo in range(0, rows, ENROL_CALL):
                hi = min(rows, lo + ENROL_CALL)
                emb = np.concatenate([rng.normal(size=(min(CHUNK, hi - c), dim)).astype(np.float32)
                                      for c in range(lo, hi, CHUNK)])
                st.enroll(emb, [f"item-{i}" for i in range(lo, hi)], [f"person-{i % 100_000}" for i in range(lo, hi)])
            st.remove([f"item-{i}" for i in range(0, rows, 1000)])
            built = time.perf_counter()
            kind = store_index(st).kind
        print(f"built {rows:,} rows in {built - t:.0f} s, {kind} index in {time.perf_counter() - built:.0f} s",
              flush=True)
    if not queries.exists():
        np.save(queries, l2_normalize(rng.normal(size=(nq, dim))).astype(np.float32))


def timed(tree: Path, args: list[str], code: str = CLI) -> tuple[float, float, bytes]:
    """(wall s, peak RSS MiB, stdout) of one `gallery ...` call (or of `code`) run from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, *args],
                                cwd=tree, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage (peak RSS)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"{tree}: gallery {' '.join(args)} exited {proc.returncode}: {stderr.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--before", default=None, help="A git revision to measure too (e.g. HEAD~1).")
    ap.add_argument("--workdir", default=None, help="Where the store is built or reused (default: a temp folder).")
    ap.add_argument("--out", default="bench/results/search_cold.json")
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="search_cold_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store, queries = work / f"cold_{a.rows}_{a.dim}.h5", work / f"queries_{a.queries}_{a.dim}.npy"
    trees = {"after": ROOT}
    old = None
    try:
        # Built in a separate process: a child's peak RSS counts the parent's at fork time.
        builder = multiprocessing.get_context("spawn").Process(
            target=build, args=(store, queries, a.rows, a.dim, a.queries))
        builder.start()
        builder.join()
        if builder.exitcode:
            raise SystemExit(f"building {store} failed (exit {builder.exitcode})")
        if a.before:
            old = Path(tempfile.mkdtemp(prefix="search_cold_before_"))
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.before, "gallery", "cli"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.before], check=True,
                                 capture_output=True, text=True).stdout.strip()
            trees = {f"before ({rev})": old, **trees}
        args = ["search", str(store), "--embeddings", str(queries), "-k", str(a.k), "--json"]
        results, answers = [], {}
        for name, tree in trees.items():
            answers[name] = json.loads(timed(tree, args)[2])  # untimed: page cache, .pyc files
            runs = [timed(tree, args)[:2] for _ in range(a.repeats)]
            walls, rss = zip(*runs)
            columns = float(timed(tree, [str(store)], COLUMNS)[2])  # what every search paid before
            results.append({"code": name, "wall_s": float(np.median(walls)), "walls_s": list(walls),
                            "peak_rss_mib": float(max(rss)), "columns_s": columns})
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    same = len({json.dumps(v, sort_keys=True) for v in answers.values()}) == 1
    print(f"\ngallery search, {a.rows:,} rows x {a.dim} float16, {a.queries} queries, k={a.k}, "
          f"median of {a.repeats} fresh processes ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")
    print(f"{'code':<24} {'search wall s':>14} {'peak RSS MiB':>13} {'columns() s':>12}")
    for row in results:
        print(f"{row['code']:<24} {row['wall_s']:>14.2f} {row['peak_rss_mib']:>13.0f} {row['columns_s']:>12.2f}")
    print(f"JSON answers identical across trees: {same}")
    out = {"rows": a.rows, "dim": a.dim, "dtype": "float16", "queries": a.queries, "k": a.k,
           "repeats": a.repeats, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
           "answers_identical": same, "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
