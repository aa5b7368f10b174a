"""Pooled comparison for examples/reproduce.py: seeds x scenarios x old kinds x methods.

Every number is recomputed from the item embeddings each `gallery check-compat` saved
(--save-embeddings) with the checker's own 1:N protocol, and checked against the
report's headline (rank-1) before use. Method gaps are *paired*: the same probes
searched by two new models; the 95% interval is a percentile bootstrap over probes
(the same resampled probes for every seed, the gap averaged over seeds), and the seed
spread (each seed's gap; each seed's rank-1 with mean ± sd) is shown next to it.

    python examples/reproduce_paired.py DIR            # rewrite DIR/results.* from its saved hits
    python examples/reproduce_paired.py OUT --merge RUN1 RUN2   # pool runs that trained other seeds
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

COMPARISONS = {"new->old": ("new", "old"), "new/new": ("new", "new"), "old/old": ("old", "old")}
FOCUS = "mixbct"  # the paper's method: every other method is compared with it
META = ("independent", "auto")  # not ranked: the reference, and a pick among the others


def probe_hits(emb_path: Path, seed: int) -> dict[str, np.ndarray]:
    """Per mated probe: 1 if the mate is rank 1, for each comparison (check-compat's protocol)."""
    from gallery.compat.evalsets.embeddings import read_embeddings
    from gallery.compat.protocols import ProtocolConfig, search_protocol
    from gallery.metrics.identification import search_stats
    from gallery.preprocess import l2_normalize

    emb = read_embeddings(emb_path)
    search = search_protocol(emb["labels"], ProtocolConfig(seed=seed))
    units = {role: l2_normalize(f) for role, f in emb["features"].items()}
    out = {}
    for name, (q, g) in COMPARISONS.items():
        stats = search_stats(units[q][search.probes], units[g][search.gallery],
                             search.probe_labels, search.gallery_labels)
        out[name] = (stats.rank[stats.mated] == 1).astype(np.float64)
    return out


def collect(paths: dict, reports: dict, check_seed: int) -> dict:
    """hits[scenario][kind][method][comparison] = (seeds x probes) array, checked against reports."""
    hits: dict = {}
    for seed, by_scenario in paths.items():
        for scenario, by_kind in by_scenario.items():
            for kind, by_method in by_kind.items():
                for method, check_path in by_method.items():
                    emb = Path(check_path).with_name(f"{method}.emb.h5")
                    got = probe_hits(emb, check_seed)
                    values = reports[seed][scenario][kind][method]["headline"]["values"]
                    for name, row in got.items():
                        if abs(row.mean() - values[name]) > 1e-9:
                            raise SystemExit(f"error: {emb}: {name} rank-1 {row.mean()} != report "
                                             f"{values[name]}; the protocol drifted")
                        (hits.setdefault(scenario, {}).setdefault(kind, {}).setdefault(method, {})
                         .setdefault(name, []).append(row))
    return {s: {k: {m: {c: np.stack(rows) for c, rows in by_c.items()} for m, by_c in by_m.items()}
                for k, by_m in by_k.items()} for s, by_k in hits.items()}


def paired(a: np.ndarray, b: np.ndarray, draws: int, rng: np.random.Generator) -> dict:
    """Gap a - b (seeds x probes, same probes): pooled mean, bootstrap 95% CI, seed spread."""
    gap = a - b
    per_seed = gap.mean(axis=1)
    n = gap.shape[1]
    boot = np.empty(draws)
    for i in range(draws):
        boot[i] = gap[:, rng.integers(0, n, n)].mean()
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"gap": float(per_seed.mean()), "ci95": [float(lo), float(hi)],
            "per_seed": [float(v) for v in per_seed], "excludes_zero": bool(lo > 0 or hi < 0),
            "probes": int(n), "seeds": int(gap.shape[0])}


def summarise(hits: dict, draws: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out: dict = {}
    for scenario, by_kind in hits.items():
        for kind, by_method in by_kind.items():
            rows = {}
            for method, by_c in by_method.items():
                seeds = by_c["new->old"].mean(axis=1)
                old = by_c["old/old"].mean(axis=1)
                own = by_c["new/new"].mean(axis=1)
                rows[method] = {
                    "old_old": float(old.mean()), "old_old_seeds": [float(v) for v in old],
                    "new_new": float(own.mean()), "new_new_seeds": [float(v) for v in own],
                    "new_new_sd": _sd(own), "new_old_sd": _sd(seeds),
                    "new_old": float(seeds.mean()), "new_old_seeds": [float(v) for v in seeds],
                    "margin": float((seeds - old).mean()),
                    "criterion_seeds": int(((seeds - old) > 0).sum()), "seeds": int(len(seeds)),
                }
            gaps = {}
            if FOCUS in by_method:
                for method in by_method:
                    if method in (FOCUS, "independent"):
                        continue
                    gaps[method] = {c: paired(by_method[FOCUS][c], by_method[method][c], draws, rng)
                                    for c in ("new->old", "new/new")}
            compatible = [m for m, r in rows.items() if m not in META and r["margin"] > 0]
            best = {}
            for c, key in (("new->old", "new_old"), ("new/new", "new_new")):
                pool = compatible or [m for m in rows if m not in META]
                ranked = sorted(pool, key=lambda m: rows[m][key], reverse=True)
                if len(ranked) >= 2:
                    best[c] = {"first": ranked[0], "second": ranked[1],
                               **paired(by_method[ranked[0]][c], by_method[ranked[1]][c], draws, rng)}
            out.setdefault(scenario, {})[kind] = {"rows": rows, "gaps_vs_mixbct": gaps,
                                                  "best_among_compatible": best,
                                                  "compatible": compatible}
    return out


def _sd(per_seed: np.ndarray) -> float:
    """Sample standard deviation across seeds (0 for one seed)."""
    return float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0


def _spread(r: dict, key: str) -> str:
    """'mean ± sd (per-seed values)', the seed spread of one cell."""
    values = ", ".join(f"{v:.3f}" for v in r[key + "_seeds"])
    return f"{r[key]:.4f} ± {r[key + '_sd']:.3f} ({values})"


def _f(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}f}"


def _gap(g: dict) -> str:
    mark = "" if g["excludes_zero"] else " (ns)"
    spread = ", ".join(f"{v:+.3f}" for v in g["per_seed"])
    return f"{g['gap']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]{mark}, per seed {spread}"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "arch": platform.machine(), "load": round(os.getloadavg()[0], 1)}


def markdown(summary: dict, preset: dict, timings: dict, cpu: dict, total: float,
             host: dict | None = None, runs: list[dict] | None = None) -> str:
    """The tables; `runs` (from merge_runs) names each run that contributed seeds and its cost."""
    host = host or machine()
    lines = [f"### Preset `{preset.get('name', 'custom')}`: pooled over seeds "
             f"{', '.join(map(str, preset.get('seeds', [0])))} (metric: rank-1)", ""]
    for scenario, by_kind in summary.items():
        for kind, part in by_kind.items():
            rows = part["rows"]
            first = next(iter(rows.values()))
            old_seeds = ", ".join(f"{v:.3f}" for v in first.get("old_old_seeds", []))
            lines += [f"**{scenario}, old model {kind}** (old/old {_f(first['old_old'])}"
                      f"{f' ({old_seeds})' if old_seeds else ''}; {first['seeds']} seed(s))", "",
                      "| method | new/new ± sd (per seed) | new->old ± sd (per seed) | margin | "
                      "criterion passed | mixbct - method, new->old [95% CI] | "
                      "mixbct - method, new/new [95% CI] |", "|---|---|---|---|---|---|---|"]
            for method, r in rows.items():
                g = part["gaps_vs_mixbct"].get(method)
                lines.append(
                    f"| {method} | {_spread(r, 'new_new')} | {_spread(r, 'new_old')} "
                    f"| {r['margin']:+.4f} | {r['criterion_seeds']}/{r['seeds']} "
                    f"| {_gap(g['new->old']) if g else '-'} | {_gap(g['new/new']) if g else '-'} |")
            lines.append("")
            for c, b in part["best_among_compatible"].items():
                lines.append(f"- best {c} among {'compatible' if part['compatible'] else 'all'} "
                             f"methods: {b['first']}, ahead of {b['second']} by {_gap(b)}")
            lines.append("")
    cpu_total = sum((cpu or {}).values())
    lines += ["(ns): the 95% interval contains 0. Intervals: percentile bootstrap over probes, "
              "paired, gap averaged over seeds.", ""]
    if runs:  # merged: each run's own cost, then the sum
        for run in runs:
            lines.append(f"- seed{'s' if len(run['seeds']) > 1 else ''} {', '.join(map(str, run['seeds']))} "
                         f"from `{run['source']}`: "
                         f"wall {run['wall_s'] / 60:.1f} min, CPU (user+sys of its steps) "
                         f"{run['cpu_s'] / 60:.1f} min, {run['steps']} steps, "
                         f"{run['machine']['cpus']} CPU(s), load average at its end {run['machine']['load']:.1f}")
        lines += ["", f"Runs in all: wall {total / 60:.1f} min, CPU {cpu_total / 60:.1f} min.", ""]
    else:
        lines += [f"Wall time {total / 60:.1f} min, CPU time (user+sys of all steps) {cpu_total / 60:.1f} min, "
                  f"{host['cpus']} CPU(s) ({host['arch']}), load average at the end "
                  f"{host['load']:.1f}; {len(timings)} steps run.", ""]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, k, p) for s, by_k in summary.items() for k, p in by_k.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, (scenario, kind, part) in zip(axes[0], panels):
        rows = part["rows"]
        names = list(rows)
        xs = np.arange(len(names))
        for offset, key, color, label in ((-0.2, "new_new", "tab:green", "new/new"),
                                          (0.2, "new_old", "tab:red", "new->old")):
            means = [rows[m][key] for m in names]
            lo = [rows[m][key] - min(rows[m][key + "_seeds"]) for m in names]
            hi = [max(rows[m][key + "_seeds"]) - rows[m][key] for m in names]
            ax.bar(xs + offset, means, 0.4, yerr=[lo, hi], color=color, label=label, capsize=2)
        ax.axhline(next(iter(rows.values()))["old_old"], color="tab:blue", linestyle="--", label="old/old")
        ax.set_xticks(xs, names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{scenario}, old {kind} (bars: seed mean, whiskers: min..max)", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_hits(path: Path, hits: dict) -> None:
    np.savez_compressed(path, **{
        "|".join((s, k, m, c)): rows for s, by_k in hits.items() for k, by_m in by_k.items()
        for m, by_c in by_m.items() for c, rows in by_c.items()})


def load_hits(path: Path, order: list[str]) -> dict:
    """results*.hits.npz -> hits[scenario][kind][method][comparison], methods in `order`."""
    hits: dict = {}
    with np.load(path) as data:
        for key in data.files:
            scenario, kind, method, comparison = key.split("|")
            hits.setdefault(scenario, {}).setdefault(kind, {}).setdefault(method, {})[comparison] = data[key]
    return {s: {k: {m: by_m[m] for m in order if m in by_m} for k, by_m in by_k.items()}
            for s, by_k in hits.items()}


def write_summary(work: Path, suffix: str, record: dict, hits: dict, draws: int) -> str:
    """results{suffix}.{md,json,png} from the per-probe hits; `record` is the JSON minus the summary."""
    summary = summarise(hits, draws)
    md = markdown(summary, record["preset"], record["timings_s"], record["cpu_s"], record["wall_s"],
                  record.get("machine"), record.get("runs"))
    (work / f"results{suffix}.md").write_text(md)
    (work / f"results{suffix}.json").write_text(json.dumps(
        {**record, "summary": summary, "bootstrap_draws": draws}, indent=2, sort_keys=True) + "\n")
    plot(summary, work / f"results{suffix}.png")
    return md


def write_comparison(work: Path, suffix: str, preset: dict, paths: dict, reports: dict,
                     timings: dict, cpu: dict, total: float, draws: int = 1000) -> str:
    check_seed = int(preset.get("check", {}).get("seed", 0))
    hits = collect(paths, reports, check_seed)
    save_hits(work / f"results{suffix}.hits.npz", hits)
    record = {"preset": {**preset, "seeds": sorted(paths)}, "timings_s": timings, "cpu_s": cpu,
              "machine": machine(), "wall_s": round(total, 1)}
    return write_summary(work, suffix, record, hits, draws)


def rewrite_from_hits(work: Path, suffix: str = "", draws: int = 1000) -> str:
    """Recompute results{suffix}.{md,json,png} from the saved per-probe hits (no models)."""
    saved = json.loads((work / f"results{suffix}.json").read_text())
    hits = load_hits(work / f"results{suffix}.hits.npz", saved["preset"]["methods"]["names"])
    return write_summary(work, suffix, saved, hits, draws)


def merge_runs(out: Path, sources: list[Path], suffix: str = "", draws: int = 1000) -> str:
    """Pool runs of one preset that trained different seeds (e.g. seed 0 first, seeds 1-2 in a
    later run) into out/results{suffix}.*: per-probe hits stacked by seed, each run's cost kept.

    The runs must agree on everything but the seeds (the same data and probes; a probe count
    that differs is refused) and must not share a seed.
    """
    records, by_seed = [], {}
    for source in sources:
        saved = json.loads((source / f"results{suffix}.json").read_text())
        hits = load_hits(source / f"results{suffix}.hits.npz", saved["preset"]["methods"]["names"])
        seeds = [int(s) for s in saved["preset"]["seeds"]]
        if set(seeds) & set(by_seed):
            raise SystemExit(f"error: {source}: seeds {sorted(set(seeds) & set(by_seed))} are in an earlier run")
        for i, seed in enumerate(seeds):
            by_seed[seed] = {s: {k: {m: {c: rows[i] for c, rows in by_c.items()} for m, by_c in by_m.items()}
                                 for k, by_m in by_k.items()} for s, by_k in hits.items()}
        records.append((source, saved, seeds))
    first = records[0][1]
    base = {k: v for k, v in first["preset"].items() if k != "seeds"}
    for source, saved, _ in records[1:]:
        other = {k: v for k, v in saved["preset"].items() if k != "seeds"}
        if other != base:
            keys = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
            raise SystemExit(f"error: {source}: preset differs from {records[0][0]}'s in {', '.join(keys)}")
    seeds = sorted(by_seed)
    keys = {(s, k, m, c) for s, by_k in by_seed[seeds[0]].items() for k, by_m in by_k.items()
            for m, by_c in by_m.items() for c in by_c}
    for seed in seeds:
        got = {(s, k, m, c) for s, by_k in by_seed[seed].items() for k, by_m in by_k.items()
               for m, by_c in by_m.items() for c in by_c}
        if got != keys:
            raise SystemExit(f"error: seed {seed} has other results than seed {seeds[0]}: "
                             f"{sorted(got ^ keys)[:4]}")
    hits: dict = {}
    for s, k, m, c in keys:
        rows = [by_seed[seed][s][k][m][c] for seed in seeds]
        if len({len(r) for r in rows}) != 1:
            raise SystemExit(f"error: {s}/{k}/{m}/{c}: probe counts differ between seeds "
                             f"({[len(r) for r in rows]}); the runs did not use the same eval data")
        hits.setdefault(s, {}).setdefault(k, {}).setdefault(m, {})[c] = np.stack(rows)
    # the first run's order (its hits file keeps the order the run checked them in)
    hits = {s: {k: {m: hits[s][k][m] for m in by_m} for k, by_m in by_k.items()}
            for s, by_k in by_seed[records[0][2][0]].items()}
    timings, cpu, runs = {}, {}, []
    for source, saved, run_seeds in records:
        tag = "seeds" + "-".join(map(str, run_seeds))
        for name, value in saved["timings_s"].items():
            timings[name if name not in timings else f"{name}@{tag}"] = value
        for name, value in saved["cpu_s"].items():
            cpu[name if name not in cpu else f"{name}@{tag}"] = value
        runs.append({"source": str(source), "seeds": run_seeds, "wall_s": saved["wall_s"],
                     "cpu_s": round(sum(saved["cpu_s"].values()), 1), "steps": len(saved["timings_s"]),
                     "machine": saved.get("machine", {"cpus": 0, "arch": "?", "load": float("nan")})})
    save_hits(out / f"results{suffix}.hits.npz", hits)
    record = {"preset": {**base, "seeds": seeds}, "timings_s": timings, "cpu_s": cpu, "runs": runs,
              "machine": runs[-1]["machine"], "wall_s": round(sum(r["wall_s"] for r in runs), 1)}
    return write_summary(out, suffix, record, hits, draws)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Rewrite a reproduce.py comparison from its saved "
                                     "per-probe hits, or pool the seeds of several runs (--merge).")
    parser.add_argument("work", type=Path, help="Folder with results[SUFFIX].json/.hits.npz (the output with --merge).")
    parser.add_argument("suffix", nargs="?", default="", help="Results suffix, e.g. -mr05 (ablations).")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RUN",
                        help="Folders of runs of the same preset with different seeds, pooled into WORK.")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap draws.")
    args = parser.parse_args(argv)
    if args.merge:
        args.work.mkdir(parents=True, exist_ok=True)
        print(merge_runs(args.work, args.merge, args.suffix, args.bootstrap))
    else:
        print(rewrite_from_hits(args.work, args.suffix, args.bootstrap))


if __name__ == "__main__":
    main()
