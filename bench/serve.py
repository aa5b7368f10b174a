"""`gallery serve` over loopback HTTP against in-process search, in the same run.

For each index kind (default flat and ivf) on a store of N x D random rows (default
100k x 512) whose model is a real (linear, random-weight) ONNX image encoder:
  - the service is started as a process (`python -m cli.main serve`), timed to /readyz;
    a cold CLI search (`gallery search --embeddings`, a new process) is timed beside it;
  - embedding queries (JSON, 1 query per request) and image queries (multipart, one
    32x32 PNG per request) at concurrency 1 / 8 / 32: p50, p99, throughput over HTTP;
  - the same queries in-process in the same run, from as many threads: gallery.search.search
    on an open Store (what a script does: hit metadata read from HDF5 per query) and on
    the service's in-memory Snapshot (the service's work without HTTP: http - snapshot is
    the cost of HTTP); images decoded and encoded with the same library functions; faiss
    on one OpenMP thread per search, as in the service.
Prints a table and writes JSON.

    .venv/bin/python bench/serve.py --out bench/results/serve_100k.json
    .venv/bin/python bench/serve.py --rows 20000 --requests 200     # quicker
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gallery.encoder import embed_images, load_encoder  # noqa: E402
from gallery.preprocess import PreprocessSpec, load_image  # noqa: E402
from gallery.search import search  # noqa: E402
from gallery.serve.app import faiss_threads  # noqa: E402
from gallery.serve.state import load_snapshot  # noqa: E402
from gallery.store import ModelInfo, Store  # noqa: E402
from gallery.index import store_index  # noqa: E402

SIZE = 32


def linear_onnx(path: Path, dim: int, seed: int) -> None:
    """A real ONNX image encoder: flatten a 3x32x32 input, multiply by a random matrix."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(seed).standard_normal((3 * SIZE * SIZE, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["e"])],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", dim])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {**PreprocessSpec(SIZE, SIZE, "RGB", (127.5,) * 3, (127.5,) * 3).to_metadata(),
            "gallery.dim": str(dim), "gallery.model_id": f"bench-linear-{seed}"}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def make_store(path: Path, model: Path, rows: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    info = ModelInfo.from_encoder("v1", load_encoder(model))
    info.path = str(model.resolve())
    with Store.create(path, info) as store:
        for lo in range(0, rows, 20_000):
            x = rng.standard_normal((min(20_000, rows - lo), dim), dtype=np.float32)
            ids = [f"item{i}" for i in range(lo, lo + len(x))]
            store.enroll(x, ids, [f"person{i // 10}" for i in range(lo, lo + len(x))], batch_size=10_000)


def pngs(count: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def start_service(store: Path, port: int) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(store), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"service exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.02)


def cold_cli_search(store: Path, queries: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", "search", str(store), "--embeddings", str(queries),
                    "-k", "10", "--json"], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_load(call, requests: int, concurrency: int) -> dict:
    """`requests` calls of call(i) from `concurrency` threads: latency p50/p99, throughput."""
    latencies = [0.0] * requests
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            call(i)
            latencies[i] = time.perf_counter() - t0

    for i in range(min(20, requests)):  # warm-up: connections, caches, lazy imports
        call(i)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {"p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (requests - 1))],
            "throughput_qps": requests / wall, "requests": requests}


def bench_kind(kind: str, base: Path, model: Path, args, queries: np.ndarray, images: list[bytes],
               port: int) -> dict:
    store_path = base.with_name(f"{kind}.h5")
    shutil.copy(base, store_path)
    with Store.open(store_path) as st:
        t0 = time.perf_counter()
        store_index(st, kind=kind)  # the sidecar both the service and in-process search load
        build_s = time.perf_counter() - t0
    np.save(base.with_name("q.npy"), queries[:1])
    cold = cold_cli_search(store_path, base.with_name("q.npy"))
    proc, ready = start_service(store_path, port)
    url = f"http://127.0.0.1:{port}"
    rows = []
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
        return local.client

    try:
        with Store.open(store_path) as st:
            store_index(st, kind=kind)
            encoder = load_encoder(model)
            body = [json.dumps({"embeddings": [q.tolist()], "k": args.k}).encode() for q in queries]

            def http_embedding(i: int) -> None:
                r = client().post("/v1/search", content=body[i % len(body)],
                                  headers={"content-type": "application/json"})
                assert r.status_code == 200, r.text

            snap = load_snapshot(store_path)  # what the service serves from, without HTTP

            def local_embedding(i: int, on: object = st) -> None:
                faiss_threads(1)  # as the service does (ServeConfig.faiss_threads): same faiss work
                search(on, queries[i % len(queries)][None], k=args.k)

            def http_image(i: int) -> None:
                r = client().post("/v1/search", files={"image": ("q.png", images[i % len(images)], "image/png")},
                                  data={"k": str(args.k)})
                assert r.status_code == 200, r.text

            def local_image(i: int, on: object = st) -> None:
                faiss_threads(1)
                pixels = load_image(io.BytesIO(images[i % len(images)]), encoder.spec)
                search(on, embed_images(encoder, [pixels]), k=args.k)

            for query, (http_call, local_call), count in (
                    ("embedding", (http_embedding, local_embedding), args.requests),
                    ("image", (http_image, local_image), args.image_requests)):
                for concurrency in args.concurrency:
                    n = count * (1 if concurrency == 1 else 2)  # more where more run at once
                    http = run_load(http_call, n, concurrency)
                    store = run_load(local_call, n, concurrency)
                    snapshot = run_load(lambda i: local_call(i, snap), n, concurrency)
                    rows.append({"kind": kind, "query": query, "concurrency": concurrency, "http": http,
                                 "in_process_store": store, "in_process_snapshot": snapshot,
                                 "added_p50_ms": http["p50_ms"] - snapshot["p50_ms"],
                                 "throughput_ratio_snapshot": http["throughput_qps"] / snapshot["throughput_qps"],
                                 "throughput_ratio_store": http["throughput_qps"] / store["throughput_qps"]})
                    print_row(rows[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"kind": kind, "index_build_s": build_s, "service_start_to_ready_s": ready,
            "cold_cli_search_s": cold, "rows": rows}


HEADER = (f"{'index':<6}{'query':<10}{'c':>3}{'p50 http':>9}{'store':>8}{'snap':>8}{'+p50':>8}{'p99 http':>9}"
          f"{'snap':>8}{'qps http':>9}{'store':>7}{'snap':>7}{'/snap':>7}{'/store':>7}")


def print_row(r: dict) -> None:
    h, st, sn = r["http"], r["in_process_store"], r["in_process_snapshot"]
    print(f"{r['kind']:<6}{r['query']:<10}{r['concurrency']:>3}{h['p50_ms']:>9.2f}{st['p50_ms']:>8.2f}"
          f"{sn['p50_ms']:>8.2f}{r['added_p50_ms']:>8.2f}{h['p99_ms']:>9.2f}{sn['p99_ms']:>8.2f}"
          f"{h['throughput_qps']:>9.0f}{st['throughput_qps']:>7.0f}{sn['throughput_qps']:>7.0f}"
          f"{r['throughput_ratio_snapshot']:>7.2f}{r['throughput_ratio_store']:>7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", default="flat,ivf")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=200, help="embedding requests at concurrency 1 (twice that above)")
    parser.add_argument("--image-requests", type=int, default=100)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--port", type=int, default=18917)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serve.json"))
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    queries = np.random.default_rng(args.seed + 1).standard_normal((256, args.dim), dtype=np.float32)
    images = pngs(64, args.seed + 2)
    print(f"gallery serve vs in-process search: {args.rows} x {args.dim}, k={args.k}, 1 query per request")
    print("latency ms, throughput requests/s; store: in-process search on an open Store; snap: "
          "in-process search on the service's in-memory Snapshot; +p50 = http - snap")
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        model, base = Path(tmp) / "enc.onnx", Path(tmp) / "base.h5"
        linear_onnx(model, args.dim, args.seed)
        t0 = time.perf_counter()
        make_store(base, model, args.rows, args.dim, args.seed)
        enrol_s = time.perf_counter() - t0
        results = [bench_kind(kind, base, model, args, queries, images, args.port + i)
                   for i, kind in enumerate(args.kinds.split(","))]
    for r in results:
        print(f"{r['kind']}: service start -> ready {r['service_start_to_ready_s']:.2f} s, "
              f"cold CLI search {r['cold_cli_search_s']:.2f} s, index build {r['index_build_s']:.1f} s")
    report = {"rows": args.rows, "dim": args.dim, "k": args.k, "enrol_s": enrol_s, "results": results,
              "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "python": platform.python_version(), "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
