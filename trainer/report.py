"""Training outputs next to the model: metrics JSON and the loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float) + "\n")


def plot_loss(path: Path, metrics: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    steps = metrics.get("step_loss", [])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if steps:
        ax.plot([s for s, _ in steps], [v for _, v in steps], lw=1, label="loss (logged steps)")
    epochs = metrics.get("epochs", [])
    if epochs:
        ax.plot([e["end_step"] for e in epochs], [e["loss"] for e in epochs], "o-",
                label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
