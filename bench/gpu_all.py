"""Every GPU check of a device session in one run: each part in its own process and time limit.

    python bench/gpu_all.py --out /tmp/gpu [--budget-s 470] [--only search,train] [--toy]

Parts, in priority order (a part that overruns its limit is killed and the next starts;
none may start past the overall budget):
  search_10m / search_1m   bench/gpu_search.py: exact search vs the fp16 compute bound
  search_store             bench/gpu_search_store.py: the same through the library and
                           `gallery search-gpu` on an enrolled 1M-row store
  train_iresnet50          bench/train.py: fit loop vs bare loop, iresnet50 112 px fp16,
                           batch 256, ArcFace over 93,431 classes
  train_iresnet18          the same for iresnet18 (1,000 classes)
  encode                   bench/gpu_encode.py: old-feature extraction and `gallery enroll`
                           with an iresnet50 `.pt` encoder
  preset                   examples/reproduce.py --preset gpu, cut to the minutes left
Each part writes <out>/<part>.json and <out>/<part>.log; <out>/summary.json and the table
printed at the end gather them. `--toy` runs every part at CPU smoke-test sizes.
Glyph fonts: the GPU host has no CJK fonts; bench/gpu_fonts.py subsets the installed ones
and GALLERY_FONT_DIRS points the glyph builder at them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable

# name -> (limit in seconds, argv builder(out, toy)); order = priority
def parts(out: Path, toy: bool) -> list[tuple[str, int, list[str]]]:
    train_cfg = "configs/gpu_iresnet50.toml"
    if toy:
        return [
            ("search_10m", 60, [PY, "bench/gpu_search.py", "--device", "cpu", "--rows", "20000", "--dim", "64",
                                "--queries", "64", "--block-rows", "4096", "--out", str(out / "search_10m.json")]),
            ("search_store", 90, [PY, "bench/gpu_search_store.py", "--device", "cpu", "--rows", "20000",
                                  "--dim", "64", "--queries", "256", "--cli-queries", "64",
                                  "--workdir", str(out / "work_store"), "--out", str(out / "search_store.json")]),
            ("train_iresnet18", 240, [PY, "bench/train.py", "--config", str(out / "toy_train.toml"),
                                      "--steps", "4", "--epochs", "2", "--rounds", "1", "--classes", "10",
                                      "--out", str(out / "train_iresnet18.json")]),
            ("encode", 120, [PY, "bench/gpu_encode.py", "--device", "cpu", "--arch", "small", "--dim", "64",
                             "--size", "32", "--images", "512", "--enrol-images", "128", "--batch", "64",
                             "--workdir", str(out / "work_encode"), "--out", str(out / "encode.json")]),
            ("preset", 400, [PY, "examples/reproduce.py", "--preset", "gpu", "--work", str(out / "preset"),
                             "--jobs", "2", *preset_cut(toy=True)]),
        ]
    return [
        ("search_10m", 75, [PY, "bench/gpu_search.py", "--rows", "10000000", "--out", str(out / "search_10m.json")]),
        ("search_1m", 40, [PY, "bench/gpu_search.py", "--rows", "1000000", "--out", str(out / "search_1m.json")]),
        ("search_store", 75, [PY, "bench/gpu_search_store.py", "--rows", "1000000",
                              "--workdir", "/tmp/gpu_store", "--out", str(out / "search_store.json")]),
        ("train_iresnet50", 150, [PY, "bench/train.py", "--config", train_cfg, "--classes", "93431",
                                  "--steps", "100", "--epochs", "2", "--rounds", "1",
                                  "--out", str(out / "train_iresnet50.json")]),
        ("train_iresnet18", 50, [PY, "bench/train.py", "--config", train_cfg, "--arch", "iresnet18",
                                 "--steps", "60", "--epochs", "3", "--rounds", "1",
                                 "--out", str(out / "train_iresnet18.json")]),
        ("encode", 50, [PY, "bench/gpu_encode.py", "--workdir", "/tmp/gpu_encode", "--out", str(out / "encode.json")]),
        ("preset", 220, [PY, "examples/reproduce.py", "--preset", "gpu", "--work", str(out / "preset"),
                         "--jobs", "4", *preset_cut(toy=False)]),
    ]


def preset_cut(toy: bool) -> list[str]:
    """The GPU preset cut to fit: fewer identities and epochs (named in the summary)."""
    if toy:
        sets = ["data.identities=40", "data.per_identity=6", "data.eval_per_identity=4", "data.image_size=32",
                "train.image_size=32", "train.device=cpu", "train.batch_size=32", "train.num_workers=0",
                "old.weak.arch=small", "old.strong.arch=small", "new.arch=small", "old.weak.epochs=1",
                "old.strong.epochs=1", "new.epochs=1", "data.workers=2"]
    else:
        sets = ["data.identities=500", "data.per_identity=24", "data.eval_per_identity=8", "data.workers=16",
                "old.weak.epochs=8", "old.strong.epochs=10", "new.epochs=6"]
    return [arg for s in sets for arg in ("--set", s)]


def run_part(name: str, limit: float, argv: list[str], out: Path) -> dict:
    start = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the part's children too (reproduce.py steps, loaders)
            proc.wait()
            status = f"killed at {limit:.0f} s"
    return {"part": name, "status": status, "seconds": round(time.perf_counter() - start, 1),
            "limit_s": round(limit)}


def headline(name: str, out: Path) -> str:
    """One line per part from its JSON (what the summary table shows)."""
    path = out / f"{name}.json"
    if name == "preset":
        path = out / "preset" / "results.json"
    if not path.exists():
        return "-"
    r = json.loads(path.read_text())
    if name.startswith("search_") and "search_two_level" in r:
        s = r["search_two_level"]
        pct = f"{s['pct_of_peak']:.0f}% of fp16 peak" if s.get("pct_of_peak") else "no peak"
        return (f"{r['rows']:,} x {r['dim']}, {r['queries']} q: {s['s'] * 1e3:.0f} ms, {s['tflops']:.0f} TFLOP/s "
                f"({pct}); matmul alone {r['matmul_only']['tflops']:.0f}; recall {r['recall_vs_float32']:.4f}"
                + (f"; fused {r['search_fused']['s'] * 1e3:.0f} ms" if r.get("search_fused") else "")
                + (f"; fused failed: {r['fused_error'][:80]}" if r.get("fused_error") else ""))
    if name == "search_store":
        return (f"{r['rows']:,} rows: library/raw {r['library_over_raw']:.3f}, upload {r['upload_s']} s, "
                f"enrol {r['enrol_rows_per_s']:,} rows/s, CLI {r['cli_queries']} q {r['cli_wall_s']} s")
    if name.startswith("train_"):
        return (f"{r['arch']} {r['image_size']}px b{r['batch_size']} {r.get('num_classes', '?')} classes: "
                f"fit {r['fit_img_s']:.0f} img/s, bare {r['bare_img_s']:.0f}, ratio {r['ratio']:.3f}")
    if name == "encode":
        return (f"{r['arch']}: bare {r['bare_img_s']:.0f} img/s, extract {r['extract_img_s']:.0f} "
                f"({r['extract_over_bare']:.2f} of bare), enrol e2e {r['enrol_img_s_end_to_end']:.0f} img/s")
    return "see JSON"


def environment() -> dict:
    """Card, driver and library versions, recorded with the results."""
    env = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda,
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError:
        env["torch"] = None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True, check=False) \
        if shutil.which("nvidia-smi") else None
    env["nvidia_smi"] = smi.stdout.strip() if smi else None
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=470.0, help="no part starts past this")
    ap.add_argument("--only", default=None, help="comma-separated part names")
    ap.add_argument("--toy", action="store_true", help="CPU smoke-test sizes")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.toy:
        (args.out / "toy_train.toml").write_text(
            'arch = "small"\nhead = "arcface"\ndim = 64\nimage_size = 32\ncolor_order = "GRAY"\n'
            'batch_size = 16\ndevice = "cpu"\nnum_workers = 0\n')
    env = environment()
    print(json.dumps(env), flush=True)
    t0 = time.perf_counter()
    rows = []
    chosen = set(args.only.split(",")) if args.only else None
    for name, limit, argv in parts(args.out, args.toy):
        if chosen and name not in chosen:
            continue
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 15:
            rows.append({"part": name, "status": "not started (budget spent)", "seconds": 0, "limit_s": 0})
            continue
        print(f"[{time.perf_counter() - t0:6.0f} s] {name} (limit {min(limit, left):.0f} s)", flush=True)
        rows.append(run_part(name, min(limit, left), argv, args.out))
        print(f"         -> {rows[-1]['status']} in {rows[-1]['seconds']} s: {headline(name, args.out)}", flush=True)
    for row in rows:
        row["result"] = headline(row["part"], args.out)
    summary = {"environment": env, "parts": rows, "total_s": round(time.perf_counter() - t0, 1),
               "preset_cut": preset_cut(args.toy), "toy": args.toy}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'part':16s} {'status':>22s} {'s':>6s}  result")
    for row in rows:
        print(f"{row['part']:16s} {row['status']:>22s} {row['seconds']:>6}  {row['result']}")
    print(f"total {summary['total_s']} s")


if __name__ == "__main__":
    main()
