"""Adapters between independently trained encoders, on glyph identities (open-class split).

Given two encoders trained by `gallery train` (see BENCHMARKS.md, "Adapters"), trains
adapters h: old -> new on several image sources and sizes and scores each with the
compatibility check on the second half of every evaluation identity's images (the first
half is one of the training sources: "the gallery's own identities, other images"):

    .venv/bin/python bench/adapters.py --work runs/adapt --old v1.onnx --new v2.onnx \
        [--same-dim-old v1b.onnx] --out bench/results/adapters.json

Prints a markdown table (rank-1 and TAR@1e-3 of old/old, new/new, new->h(old)) and
writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gallery.compat.checker import ADAPTED, CheckConfig, run_check
from gallery.imagefolder import list_image_folder


def split_eval(src: Path, work: Path) -> tuple[Path, Path]:
    """eval-a / eval-b: the first / second half of each identity's images (symlinks)."""
    a, b = work / "eval-a", work / "eval-b"
    if not b.exists():
        listing = list_image_folder(src)
        by_id: dict[str, list[Path]] = {}
        for path, identity in zip(listing.paths, listing.identities):
            by_id.setdefault(identity, []).append(path)
        for identity, paths in by_id.items():
            half = len(paths) // 2
            for part, chosen in ((a, paths[:half]), (b, paths[half:])):
                (part / identity).mkdir(parents=True, exist_ok=True)
                for p in chosen:
                    (part / identity / p.name).symlink_to(p.resolve())
    return a, b


def score(old: str, new: str, data: Path, adapter: str | None, pairs: int) -> dict:
    report = run_check(CheckConfig(old=old, new=new, data=str(data), adapter=adapter, impostor_pairs=pairs,
                                   batch_size=256)).report
    out = {}
    for name, comp in report["comparisons"].items():
        tars = {p["far"]: p["tar"] for p in comp["verification"]["tar_at_far"]}
        out[name] = {"rank1": comp["identification"]["rank1"], "tar_1e-3": tars.get(1e-3)}
    out["protocol"] = report["protocol"]["search"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True, help="Holds glyphs/ (gallery data glyphs --out).")
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--same-dim-old", default=None, help="An old model of the new model's dim.")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--impostor-pairs", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from trainer.adapter import AdapterConfig, train_adapter

    torch.set_num_threads(1)
    glyphs = args.work / "glyphs" / "open-class"
    eval_a, eval_b = split_eval(glyphs / "eval", args.work)
    started = time.perf_counter()
    runs = [  # (row, old model, data, fraction, extra AdapterConfig fields)
        ("new-train 1%", args.old, glyphs / "new", 0.01, {}),
        ("new-train 10%", args.old, glyphs / "new", 0.10, {}),
        ("new-train 100%", args.old, glyphs / "new", 1.0, {}),
        ("new-train 100%, linear", args.old, glyphs / "new", 1.0, {"arch": "linear"}),
        ("new-train 100%, + prototype labels", args.old, glyphs / "new", 1.0,
         {"labels": True, "label_loss": "prototype"}),
        ("new-train 100%, + contrastive labels", args.old, glyphs / "new", 1.0,
         {"labels": True, "label_loss": "contrastive"}),
        ("old-train 100% (v1's identities)", args.old, glyphs / "old", 1.0, {}),
        ("gallery identities, other images", args.old, eval_a, 1.0, {}),
    ]
    if args.same_dim_old:
        runs += [("same-dim old: new-train 10%", args.same_dim_old, glyphs / "new", 0.10, {}),
                 ("same-dim old: new-train 100%", args.same_dim_old, glyphs / "new", 1.0, {})]
    rows = []
    for name, old, data, fraction, extra in runs:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        out = args.work / "adapters" / f"{slug}.onnx"
        config = AdapterConfig(old=old, new=args.new, data=str(data), out=str(out), fraction=fraction,
                               epochs=args.epochs, threads=1, **extra)
        t0 = time.perf_counter()
        metrics = train_adapter(config).metrics
        seconds = time.perf_counter() - t0
        scores = score(old, args.new, eval_b, str(out), args.impostor_pairs)
        rows.append({"row": name, "old": old, "data": str(data), "fraction": fraction, **extra,
                     "num_train": metrics["num_train"], "val_cos": metrics["val_cos"],
                     "val_top1": metrics["val_top1"], "linear_init_val_top1": metrics["linear_init_val_top1"],
                     "linear_init_val_cos": metrics["linear_init_val_cos"], "best_epoch": metrics["best_epoch"],
                     "train_seconds": round(seconds, 1), "scores": scores})
        print(f"{name}: {scores[ADAPTED]}", file=sys.stderr, flush=True)
    no_adapter = [score(args.same_dim_old, args.new, eval_b, None, args.impostor_pairs)] if args.same_dim_old else []
    print(f"adapters, eval = second half of each eval identity's images ({eval_b}); "
          f"load average {os.getloadavg()[0]:.1f}; {time.perf_counter() - started:.0f} s")
    print("| adapter training data | images | best epoch | held-out cos | held-out top-1 | old/old rank-1 | "
          "new/new rank-1 | new->h(old) rank-1 | old/old TAR@1e-3 | new->h(old) TAR@1e-3 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["scores"]
        print(f"| {r['row']} | {r['num_train']} | {r['best_epoch']} | {r['val_cos']:.3f} | {r['val_top1']:.3f} | "
              f"{s['old/old']['rank1']:.3f} | "
              f"{s['new/new']['rank1']:.3f} | **{s[ADAPTED]['rank1']:.3f}** | {_t(s['old/old'])} | {_t(s[ADAPTED])} |")
    for s in no_adapter:
        print(f"| same-dim old, no adapter (new->old) | - | - | - | - | {s['old/old']['rank1']:.3f} | "
              f"{s['new/new']['rank1']:.3f} | {s['new->old']['rank1']:.3f} (raw) | {_t(s['old/old'])} | "
              f"{_t(s['new->old'])} (raw) |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "no_adapter": no_adapter,
                                        "load_average": os.getloadavg()[0]}, indent=2) + "\n")


def _t(entry: dict) -> str:
    return "-" if entry.get("tar_1e-3") is None else f"{entry['tar_1e-3']:.3f}"


if __name__ == "__main__":
    sys.exit(main())
