"""End to end through a store: a v1 gallery upgraded to a v2 of another dimension without
re-encoding it (`gallery upgrade --adapter`, or a v2 with an old-space projection from
`train-compatible --dim`), then searched by v2 query images, next to the check-compat
estimate of the same comparison on the same 1:N split.

    .venv/bin/python bench/adapter_store.py --old v1.onnx --new v2.onnx [--adapter v1_to_v2.onnx] \
        --data EVAL_FOLDER --work runs/adapter-store --out bench/results/adapters/store.json

The split is check-compat's own (gallery/compat/protocols.py, default seed): its gallery
images are enrolled into a v1 store (`Gallery.enroll` of an identity folder), its probes are
searched through the store (`Gallery.search`, images embedded by the query model). Prints
a markdown table: rank-1 over mated probes (store vs check-compat), and open-set decisions
at the calibrated thresholds (v1's own pair calibrated from the report first, as a live
store has it; the upgrade stores v2's; mated: correct / wrong / rejected; non-mated:
falsely accepted). Then rolls back and checks v1's answers (rows, scores, thresholds) are
unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

import gallery
from gallery.compat.checker import ADAPTED, CheckConfig, run_check
from gallery.compat.evalsets import open_evalset
from gallery.compat.report import write_report
from gallery.thresholds import calibrate


def split(data: Path, work: Path) -> tuple[Path, list[Path], list[str], set[str]]:
    """check-compat's 1:N split of `data`: a folder of its gallery images (symlinks), the probe
    paths, their identities, and the enrolled identities."""
    evalset = open_evalset(data)
    protocol = evalset.search_protocol(CheckConfig().protocol())
    paths, identities = evalset.listing.paths, evalset.listing.identities
    folder = work / "gallery"
    shutil.rmtree(folder, ignore_errors=True)
    for i in protocol.gallery.tolist():
        (folder / identities[i]).mkdir(parents=True, exist_ok=True)
        (folder / identities[i] / Path(paths[i]).name).symlink_to(Path(paths[i]).resolve())
    probes = [Path(paths[i]) for i in protocol.probes.tolist()]
    return folder, probes, [identities[i] for i in protocol.probes.tolist()], \
        {identities[i] for i in protocol.gallery.tolist()}


def decisions(result, truth: list[str], enrolled: set[str]) -> dict:
    top = [str(x) for x in result.identities[:, 0]]
    match = result.match()
    mated = [i for i, t in enumerate(truth) if t in enrolled]
    other = [i for i, t in enumerate(truth) if t not in enrolled]
    return {"rank1": float(np.mean([top[i] == truth[i] for i in mated])), "mated": len(mated),
            "non_mated": len(other),
            "correct": sum(match[i] == truth[i] for i in mated), "wrong": sum(match[i] not in (None, truth[i]) for i in mated),
            "rejected": sum(match[i] is None for i in mated), "false_accepts": sum(match[i] is not None for i in other)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, help="v1 -> v2 adapter (else --new must have an old_space output)")
    parser.add_argument("--data", type=Path, required=True, help="Evaluation identity folder.")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--impostor-pairs", type=int, default=100_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.perf_counter()
    report = run_check(CheckConfig(old=str(args.old), new=str(args.new), data=str(args.data),
                                   adapter=None if args.adapter is None else str(args.adapter),
                                   impostor_pairs=args.impostor_pairs, max_new_drop=1.0)).report
    write_report(report, args.work / "report.json")
    timings["check_compat_s"] = time.perf_counter() - started
    cross = ADAPTED if args.adapter else "new->old"
    estimate = {name: report["comparisons"][name]["identification"]["rank1"] for name in ("old/old", "new/new", cross)}

    folder, probes, truth, enrolled = split(args.data, args.work)
    store = args.work / "store"
    shutil.rmtree(store, ignore_errors=True)
    gallery.create(store, model=args.old).close()
    with gallery.open(store) as g:
        started = time.perf_counter()
        g.enroll(folder)
        timings["enrol_s"] = time.perf_counter() - started
        calibrate(store, report=args.work / "report.json")  # v1's own pair, as a live store has it
        g.refresh()
        before = g.search(probes, k=5)
        v1 = decisions(before, truth, enrolled)
        started = time.perf_counter()
        upgrade = g.upgrade(args.new, args.work / "report.json", adapter=args.adapter)
        timings["upgrade_s"] = time.perf_counter() - started
        after = g.search(probes, k=5)
        v2 = decisions(after, truth, enrolled)
        verified = g.verify()["ok"]
        g.rollback()
        again = g.search(probes, k=5)
    same = all(np.array_equal(getattr(before, f), getattr(again, f)) for f in ("rows", "scores", "thresholds"))
    out = {"old": str(args.old), "new": str(args.new), "adapter": None if args.adapter is None else str(args.adapter),
           "data": str(args.data), "route": upgrade["route"], "gallery_images": len(list(folder.rglob("*.png"))),
           "probes": len(probes), "check_compat_rank1": estimate, "store_v1": v1, "store_v2": v2,
           "thresholds": {t["query"] + "->" + t["gallery"]: t["threshold"] for t in upgrade["thresholds"]},
           "verify_ok": verified, "rollback_same_answers": same, "timings": timings}
    print(f"| query path | store rank-1 | check-compat rank-1 | correct | wrong | rejected | non-mated accepted |")
    print("|---|---|---|---|---|---|---|")
    for name, row, est in (("v1 -> v1 rows", v1, estimate["old/old"]), (f"v2 -> v1 rows ({upgrade['route']})", v2,
                                                                        estimate[cross])):
        print(f"| {name} | {row['rank1']:.3f} | {est:.3f} | {row['correct']} | {row['wrong']} | {row['rejected']} | "
              f"{row['false_accepts']}/{row['non_mated']} |")
    print(f"mated probes {v1['mated']}; verify ok {verified}; rollback gives v1's answers again: {same}; "
          f"timings {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
