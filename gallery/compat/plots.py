"""ROC and CMC curves of every comparison in one PNG (matplotlib Figure, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gallery.metrics.verification import roc_curve

STYLES = {"old/old": ("tab:blue", "-"), "new/new": ("tab:green", "-"), "new->old": ("tab:red", "--"),
          "old->new": ("tab:orange", "--"), "reference/reference": ("tab:gray", ":")}


def _thin(far: np.ndarray, tar: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Keep the curve's shape on a log-FAR axis without plotting a million points."""
    if far.size <= points:
        return far, tar
    grid = np.unique(np.r_[np.geomspace(max(far[far > 0].min(), 1e-9), 1.0, points), far[-1]])
    index = np.minimum(np.searchsorted(far, grid, side="right") - 1, far.size - 1)
    return far[index], tar[index]


def plot_curves(curves: dict, path: str | Path, title: str = "compatibility check") -> None:
    """curves: comparison -> {"genuine", "impostor", "cmc"} score arrays; either kind may be absent."""
    # matplotlib takes seconds to import: only a check asked for a plot pays it (CLI start-up).
    # The Figure API needs no pyplot and no display backend.
    from matplotlib.figure import Figure

    has_roc = any("impostor" in c for c in curves.values())
    has_cmc = any("cmc" in c for c in curves.values())
    panels = int(has_roc) + int(has_cmc)
    fig = Figure(figsize=(6 * max(panels, 1), 4.5))
    axes = fig.subplots(1, max(panels, 1), squeeze=False)
    axes = list(axes[0])
    if has_roc:
        ax = axes.pop(0)
        for name, curve in curves.items():
            if "impostor" in curve:
                far, tar, _ = roc_curve(curve["genuine"], curve["impostor"])
                far, tar = _thin(far, tar)
                keep = far > 0
                colour, style = STYLES.get(name, ("black", "-"))
                ax.step(far[keep], tar[keep], where="post", color=colour, linestyle=style, label=name)
        ax.set(xscale="log", xlabel="FAR", ylabel="TAR", title="1:1 ROC", ylim=(0, 1.01))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    if has_cmc:
        ax = axes.pop(0)
        for name, curve in curves.items():
            if "cmc" in curve:
                cmc = np.asarray(curve["cmc"])
                colour, style = STYLES.get(name, ("black", "-"))
                ax.plot(np.arange(1, cmc.size + 1), cmc, color=colour, linestyle=style, marker=".", label=name)
        ax.set(xlabel="rank", ylabel="identification rate", title="1:N CMC", ylim=(0, 1.01))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
