"""Rollout costs on a gallery of N rows: the query-model switch, search before/after a
backfill (the overlay's overhead), and backfill throughput.

A linear ONNX encoder (built with onnx.helper, no torch) over 16x16 grey PNGs stands in
for v1 and v2, so the numbers are the rollout machinery's (decode, commit, flush), not a
network's. The compat report is synthetic: this measures speed, not compatibility.

    .venv/bin/python bench/rollout.py                         # 50k rows, 5k images
    .venv/bin/python bench/rollout.py --rows 200000 --images 20000 --out bench/results/rollout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from gallery.fingerprint import file_sha256
from gallery.rollout import BackfillConfig, backfill, rollback, upgrade
from gallery.store import Store
from gallery.search import search

SIZE, DIM = 16, 64


def linear_onnx(path: Path, seed: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gallery.preprocess import PreprocessSpec

    w = np.random.default_rng(seed).standard_normal((SIZE * SIZE, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["e"])],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", DIM])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    meta = {**PreprocessSpec(SIZE, SIZE, "GRAY", (127.5,), (127.5,)).to_metadata(),
            "gallery.dim": str(DIM), "gallery.model_id": f"linear-{seed}"}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def build(work: Path, rows: int, images: int) -> tuple[Path, Path]:
    """A v1 store: `images` rows enrolled from PNGs (backfillable), the rest from embeddings."""
    from PIL import Image

    import gallery

    linear_onnx(work / "v1.onnx", 1)
    linear_onnx(work / "v2.onnx", 2)
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = work / "images" / f"p{i // 5}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(folder / f"{i}.png")
    store = work / "g.h5"
    with gallery.create(store, work / "v1.onnx") as g:
        g.enroll(work / "images")
        for lo in range(images, rows, 50_000):
            x = rng.standard_normal((min(50_000, rows - lo), DIM), dtype=np.float32)
            g.enroll(x, [f"e{i}" for i in range(lo, lo + len(x))], batch_size=10_000)
    report = {"schema_version": "gallery.compat-report/1", "passed": True, "failed_gates": [],
              "gates": [{"name": "synthetic", "passed": True}], "data": {}, "protocol": {}, "headline": {},
              "comparisons": {}, "criterion": {"passed": True}, "config": {},
              "models": {"old": {"sha256": file_sha256(work / "v1.onnx")}, "new": {"sha256": file_sha256(work / "v2.onnx")}},
              "thresholds": [{"query": "new", "gallery": g, "query_sha256": "", "gallery_sha256": "",
                              "threshold": 0.5, "far": 1e-4} for g in ("old", "new")]}
    (work / "report.json").write_text(json.dumps(report))
    return store, work / "report.json"


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def search_ms(store: Path, queries: np.ndarray, repeats: int = 5) -> float:
    with Store.open(store) as st:
        search(st, queries, k=10)  # build / load the index once
        return 1000 * timed(lambda: search(st, queries, k=10), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    queries = np.random.default_rng(1).standard_normal((args.queries, DIM), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store, report = build(work, args.rows, args.images)
        results = {"rows": args.rows, "images": args.images, "queries": args.queries, "dim": DIM}
        results["search_ms_v1"] = search_ms(store, queries)
        results["upgrade_ms"] = 1000 * timed(lambda: upgrade(store, work / "v2.onnx", report))
        results["search_ms_v2_no_backfill"] = search_ms(store, queries)
        start = time.perf_counter()
        out = backfill(BackfillConfig(store=str(store), images=str(work / "images"), batch_size=args.batch_size))
        results["backfill_rows_per_s"] = out["embedded"] / (time.perf_counter() - start)
        results["search_ms_v2_backfilled"] = search_ms(store, queries)
        results["rollback_ms"] = 1000 * timed(lambda: rollback(store))
        results["search_ms_after_rollback"] = search_ms(store, queries)
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_1m": os.getloadavg()[0]}
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
