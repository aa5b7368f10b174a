"""Table, claim checks and plot for examples/reproduce.py, from the check-compat reports.

Every number comes from a `gallery check-compat` JSON report; nothing is typed in.
The claims are evaluated from the same numbers (criterion, best cross-test among
the compatible methods, MixBCT new/new vs L2's).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ORDER = ("independent", "l2", "bct", "mixbct")


def _tar(comparison: dict, far: float) -> float | None:
    for point in comparison.get("verification", {}).get("tar_at_far", []):
        if abs(point["far"] - far) < far * 1e-6:
            return float(point["tar"])
    return None


def summarize(report: dict) -> dict:
    values = report["headline"]["values"]
    gain = (report.get("gain") or {}).get("value")
    return {
        "old_old": values["old/old"], "new_new": values["new/new"], "new_old": values["new->old"],
        "reference": values.get("reference/reference"),
        "criterion": bool(report["criterion"]["passed"]), "margin": report["criterion"]["margin"],
        "gain": gain,
        "cross_tar_1e-3": _tar(report["comparisons"]["new->old"], 1e-3),
        "new_tar_1e-3": _tar(report["comparisons"]["new/new"], 1e-3),
        "old_tar_1e-3": _tar(report["comparisons"]["old/old"], 1e-3),
    }


def claims(rows: dict[str, dict]) -> dict:
    """The paper's claims, decided from this run's numbers."""
    compatible = [m for m, r in rows.items() if r["criterion"] and m != "independent"]
    best = max(compatible, key=lambda m: rows[m]["new_old"]) if compatible else None
    mix, l2 = rows.get("mixbct"), rows.get("l2")
    return {
        "compatible_methods": compatible,
        "mixbct_satisfies_criterion": bool(mix and mix["criterion"]),
        "best_cross_among_compatible": best,
        "mixbct_best_cross": best == "mixbct",
        "mixbct_new_new_ge_l2": bool(mix and l2 and mix["new_new"] >= l2["new_new"]),
    }


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}"


def markdown(preset: dict, table: dict[str, dict[str, dict]], verdicts: dict, timings: dict, total: float,
             metric: str, cpu: dict | None = None) -> str:
    lines = [f"### Preset `{preset.get('name', 'custom')}` — headline metric: {metric}", ""]
    for kind, rows in table.items():
        lines += [f"**Old model: {kind}** (old/old = {_fmt(next(iter(rows.values()))['old_old'])})", "",
                  "| new model | old/old | new/new | new->old | criterion (new->old > old/old) | update gain"
                  " | new->old TAR@1e-3 | new/new TAR@1e-3 |",
                  "|---|---|---|---|---|---|---|---|"]
        for method in sorted(rows, key=lambda m: ORDER.index(m) if m in ORDER else 99):
            r = rows[method]
            crit = f"{_fmt(r['criterion'])} ({r['margin']:+.4f})"
            lines.append(f"| {method} | {_fmt(r['old_old'])} | {_fmt(r['new_new'])} | {_fmt(r['new_old'])} "
                         f"| {crit} | {_fmt(r['gain'], 3)} | {_fmt(r['cross_tar_1e-3'])} | {_fmt(r['new_tar_1e-3'])} |")
        v = verdicts[kind]
        lines += ["", f"- compatible methods: {', '.join(v['compatible_methods']) or 'none'}",
                  f"- MixBCT satisfies the criterion: {_fmt(v['mixbct_satisfies_criterion'])}",
                  f"- best cross-test among compatible methods: {v['best_cross_among_compatible'] or '-'}",
                  f"- MixBCT new/new >= L2 new/new: {_fmt(v['mixbct_new_new_ge_l2'])}", ""]
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    cpu_total = sum((cpu or {}).values())
    lines += [f"Wall time {total / 60:.1f} min, CPU time (user+sys, all steps) {cpu_total / 60:.1f} min, "
              f"{os.cpu_count()} CPU(s), load average at the end {os.getloadavg()[0]:.1f} "
              f"({platform.machine()}). Steps run (wall): {steps or 'none (all cached)'}.", ""]
    return "\n".join(lines)


def plot(table: dict[str, dict[str, dict]], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 4.2), squeeze=False)
    for ax, (kind, rows) in zip(axes[0], table.items()):
        methods = sorted(rows, key=lambda m: ORDER.index(m) if m in ORDER else 99)
        xs = range(len(methods))
        ax.bar([x - 0.2 for x in xs], [rows[m]["new_new"] for m in methods], 0.4, label="new/new", color="tab:green")
        ax.bar([x + 0.2 for x in xs], [rows[m]["new_old"] for m in methods], 0.4, label="new->old", color="tab:red")
        ax.axhline(rows[methods[0]]["old_old"], color="tab:blue", linestyle="--", label="old/old")
        ax.set_xticks(list(xs), methods)
        ax.set_title(f"old model: {kind}")
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(work: Path, suffix: str, preset: dict, reports: dict, timings: dict, total: float,
                  cpu: dict | None = None) -> str:
    table = {kind: {m: summarize(r) for m, r in by_method.items()} for kind, by_method in reports.items()}
    verdicts = {kind: claims(rows) for kind, rows in table.items()}
    metric = next(iter(next(iter(reports.values())).values()))["headline"]["metric"]
    md = markdown(preset, table, verdicts, timings, total, metric, cpu)
    (work / f"results{suffix}.md").write_text(md)
    (work / f"results{suffix}.json").write_text(json.dumps(
        {"preset": preset, "metric": metric, "table": table, "claims": verdicts, "timings_s": timings, "cpu_s": cpu or {},
         "wall_s": round(total, 1)}, indent=2, sort_keys=True) + "\n")
    plot(table, work / f"results{suffix}.png", metric)
    return md
