"""Pooled comparison for examples/reproduce.py: seeds x scenarios x old kinds x methods.

Every number is recomputed from the item embeddings each `gallery check-compat` saved
(--save-embeddings) with the checker's own 1:N protocol, and checked against the
report's headline (rank-1) before use. Method gaps are *paired*: the same probes
searched by two new models; the 95% interval is a percentile bootstrap over probes
(the same resampled probes for every seed, the gap averaged over seeds), and the seed
spread (min..max of the per-seed gaps) is shown next to it.
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
                rows[method] = {
                    "old_old": float(old.mean()), "new_new": float(by_c["new/new"].mean()),
                    "new_new_seeds": [float(v) for v in by_c["new/new"].mean(axis=1)],
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


def _f(v: float, digits: int = 4) -> str:
    return f"{v:.{digits}f}"


def _gap(g: dict) -> str:
    mark = "" if g["excludes_zero"] else " (ns)"
    spread = f"{min(g['per_seed']):+.3f}..{max(g['per_seed']):+.3f}"
    return f"{g['gap']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]{mark}, seeds {spread}"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "arch": platform.machine(), "load": round(os.getloadavg()[0], 1)}


def markdown(summary: dict, preset: dict, timings: dict, cpu: dict, total: float,
             host: dict | None = None) -> str:
    host = host or machine()
    lines = [f"### Preset `{preset.get('name', 'custom')}`: pooled over seeds "
             f"{', '.join(map(str, preset.get('seeds', [0])))} (metric: rank-1)", ""]
    for scenario, by_kind in summary.items():
        for kind, part in by_kind.items():
            rows = part["rows"]
            first = next(iter(rows.values()))
            lines += [f"**{scenario}, old model {kind}** (old/old {_f(first['old_old'])}; "
                      f"{first['seeds']} seed(s))", "",
                      "| method | new/new (seeds min..max) | new->old (seeds min..max) | margin | "
                      "criterion passed | mixbct - method, new->old [95% CI] | "
                      "mixbct - method, new/new [95% CI] |", "|---|---|---|---|---|---|---|"]
            for method, r in rows.items():
                g = part["gaps_vs_mixbct"].get(method)
                lines.append(
                    f"| {method} | {_f(r['new_new'])} ({min(r['new_new_seeds']):.3f}..{max(r['new_new_seeds']):.3f}) "
                    f"| {_f(r['new_old'])} ({min(r['new_old_seeds']):.3f}..{max(r['new_old_seeds']):.3f}) "
                    f"| {r['margin']:+.4f} | {r['criterion_seeds']}/{r['seeds']} "
                    f"| {_gap(g['new->old']) if g else '-'} | {_gap(g['new/new']) if g else '-'} |")
            lines.append("")
            for c, b in part["best_among_compatible"].items():
                lines.append(f"- best {c} among {'compatible' if part['compatible'] else 'all'} "
                             f"methods: {b['first']}, ahead of {b['second']} by {_gap(b)}")
            lines.append("")
    cpu_total = sum((cpu or {}).values())
    lines += ["(ns): the 95% interval contains 0. Intervals: percentile bootstrap over probes, "
              "paired, gap averaged over seeds.", "",
              f"Wall time {total / 60:.1f} min, CPU time (user+sys of all steps) {cpu_total / 60:.1f} min, "
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


def write_comparison(work: Path, suffix: str, preset: dict, paths: dict, reports: dict,
                     timings: dict, cpu: dict, total: float, draws: int = 1000) -> str:
    check_seed = int(preset.get("check", {}).get("seed", 0))
    hits = collect(paths, reports, check_seed)
    np.savez_compressed(work / f"results{suffix}.hits.npz", **{
        "|".join((s, k, m, c)): rows for s, by_k in hits.items() for k, by_m in by_k.items()
        for m, by_c in by_m.items() for c, rows in by_c.items()})
    summary = summarise(hits, draws)
    done = {**preset, "seeds": sorted(paths)}
    host = machine()
    md = markdown(summary, done, timings, cpu, total, host)
    (work / f"results{suffix}.md").write_text(md)
    (work / f"results{suffix}.json").write_text(json.dumps(
        {"preset": done, "summary": summary, "timings_s": timings, "cpu_s": cpu, "machine": host,
         "wall_s": round(total, 1), "bootstrap_draws": draws}, indent=2, sort_keys=True) + "\n")
    plot(summary, work / f"results{suffix}.png")
    return md


def rewrite_from_hits(work: Path, suffix: str = "", draws: int = 1000) -> str:
    """Recompute results{suffix}.{md,json,png} from the saved per-probe hits (no models)."""
    saved = json.loads((work / f"results{suffix}.json").read_text())
    hits: dict = {}
    with np.load(work / f"results{suffix}.hits.npz") as data:
        for key in data.files:
            scenario, kind, method, comparison = key.split("|")
            (hits.setdefault(scenario, {}).setdefault(kind, {}).setdefault(method, {}))[comparison] = data[key]
    # keep the preset's method order
    order = saved["preset"]["methods"]["names"]
    hits = {s: {k: {m: by_m[m] for m in order if m in by_m} for k, by_m in by_k.items()}
            for s, by_k in hits.items()}
    summary = summarise(hits, draws)
    md = markdown(summary, saved["preset"], saved["timings_s"], saved["cpu_s"], saved["wall_s"],
                  saved.get("machine"))
    (work / f"results{suffix}.md").write_text(md)
    (work / f"results{suffix}.json").write_text(json.dumps(
        {**saved, "summary": summary, "bootstrap_draws": draws}, indent=2, sort_keys=True) + "\n")
    plot(summary, work / f"results{suffix}.png")
    return md


if __name__ == "__main__":
    import sys

    print(rewrite_from_hits(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""))
