"""`train-compatible --method auto`: pick the compat method on held-out identities.

1. The new training identities are split (seeded) into search-train and validation
   identities (VAL_FRACTION of them, at least 2 each); the split is written next to the
   model as HDF5 (train) and an identity folder (validation, what check-compat reads).
2. Each candidate (a small grid over the registered methods: BCT variant, L2 weight,
   mix ratio) trains for the budget on the search-train identities through the one fit
   loop: `--auto-budget N` epochs per candidate, or `Nm` minutes for the whole search
   (one calibration epoch sets the epochs per candidate).
3. Each candidate is scored with check-compat's headline on the validation identities
   against the old model: a candidate that passes the criterion (new->old > old/old)
   ranks above one that fails; passing ones by new/new, failing ones by the margin.
4. The leaderboard is written as JSON, Markdown and a plot; the winner is retrained on
   all identities with the user's full config.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gallery.errors import BadInput
from trainer.config import TrainConfig

log = logging.getLogger(__name__)
VAL_FRACTION = 0.2
# name -> (registered method, hyperparameters); every non-default value is one the
# literature or this project's benchmarks use
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "l2-w1": ("l2", {"l2_weight": 1.0}),
    "l2-w10": ("l2", {"l2_weight": 10.0}),
    "bct-official": ("bct", {"bct_variant": "official"}),
    "bct-scaled": ("bct", {"bct_variant": "scaled"}),
    "unibct": ("unibct", {}),
    "nccl": ("nccl", {}),
    "mixbct-0.3": ("mixbct", {"mix_ratio": 0.3}),
    "mixbct-0.5": ("mixbct", {"mix_ratio": 0.5}),
}


@dataclass
class Budget:
    epochs: int | None = None
    minutes: float | None = None

    @classmethod
    def parse(cls, text: str | int | float) -> "Budget":
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(e|epochs?|m|min|minutes?)?\s*", str(text))
        if not match:
            raise BadInput(f"--auto-budget expects epochs per candidate (3, 3e) or minutes "
                           f"for the whole search (20m), got {text!r}")
        value, unit = float(match.group(1)), (match.group(2) or "e")[0]
        if value <= 0:
            raise BadInput(f"--auto-budget must be > 0, got {text!r}")
        if unit == "m":
            return cls(minutes=value)
        if value != int(value):
            raise BadInput(f"--auto-budget in epochs must be a whole number, got {text!r}")
        return cls(epochs=int(value))


@dataclass
class AutoResult:
    leaderboard: list[dict[str, Any]]
    winner: str
    epochs_per_candidate: int
    final: dict[str, Any] = field(default_factory=dict)  # TrainResult.to_dict() of the winner
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "epochs_per_candidate": self.epochs_per_candidate,
                "leaderboard": self.leaderboard, "final": self.final, "files": self.files}


def split_identities(labels: np.ndarray, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train classes, validation classes), seeded; both need 2+ identities."""
    present = np.unique(labels)
    if len(present) < 4:
        raise BadInput(f"--method auto needs at least 4 identities to hold some out, "
                       f"the data has {len(present)}")
    order = np.random.default_rng(seed).permutation(present)
    n_val = max(2, int(round(VAL_FRACTION * len(present))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _rgb(images: np.ndarray, color_order: str) -> np.ndarray:
    return images[..., ::-1] if color_order == "BGR" else images


def write_split(dataset: Any, folder: Path, seed: int) -> tuple[Path, Path, dict]:
    """search-train HDF5 + validation identity folder under `folder`."""
    import h5py
    from PIL import Image

    train_c, val_c = split_identities(dataset.labels, dataset.num_classes, seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.flatnonzero(np.isin(dataset.labels, train_c))
    train_path = folder / "search_train.h5"
    with h5py.File(train_path, "w") as handle:
        # stored RGB (or gray): trainer.data.arrays converts to the spec's order on read
        handle["images"] = _rgb(dataset.images_uint8(rows), dataset.spec.color_order)
        handle["labels"] = dataset.labels[rows]
        handle["classes"] = np.asarray(dataset.classes, dtype="S")
    val_dir = folder / "validation"
    for c in val_c:
        members = np.flatnonzero(dataset.labels == c)
        target = val_dir / dataset.classes[int(c)]
        target.mkdir(parents=True, exist_ok=True)
        for i, image in zip(members, _rgb(dataset.images_uint8(members), dataset.spec.color_order)):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                target / f"{int(i):07d}.png")
    info = {"train_identities": int(len(train_c)), "validation_identities": int(len(val_c)),
            "train_images": int(len(rows)), "validation_images": int(np.isin(dataset.labels, val_c).sum())}
    return train_path, val_dir, info


def rank_key(row: dict[str, Any]) -> tuple:
    """Passing the criterion first; then new/new among passing, margin among failing."""
    passed = row["margin"] > 0
    return (passed, row["new_new"] if passed else row["margin"], row["margin"])


def score(old_model: str, new_model: str, val_dir: Path, seed: int) -> dict[str, float]:
    from gallery.compat.checker import CheckConfig, run_check

    report = run_check(CheckConfig(old=old_model, new=str(new_model), data=str(val_dir),
                                   seed=seed)).report
    values = report["headline"]["values"]
    return {"metric": report["headline"]["metric"], "old_old": values["old/old"],
            "new_new": values["new/new"], "new_old": values["new->old"],
            "margin": report["criterion"]["margin"]}


def run_auto(config: TrainConfig, budget: Budget | str,
             candidates: dict[str, tuple[str, dict]] | None = None,
             on_candidate: Callable[[str], None] | None = None) -> AutoResult:
    """Search, write the leaderboard next to config.out, retrain the winner into config.out."""
    from trainer.data import open_dataset
    from trainer.fit import fit
    from trainer.methods import load_all

    budget = Budget.parse(budget) if not isinstance(budget, Budget) else budget
    if not config.old_model:
        raise BadInput("--method auto scores candidates with the old model: pass --old")
    candidates = dict(CANDIDATES if candidates is None else candidates)
    registry = load_all()
    for method, _ in candidates.values():
        registry.get(method)
    work = config.sibling(".auto")
    dataset = open_dataset(config.data, config.preprocess_spec())
    train_path, val_dir, split = write_split(dataset, work / "split", config.seed)
    base = {**config.to_dict(), "data": str(train_path), "onnx": None, "resume": False,
            "stop_after": None, "old_features": None}
    epochs = budget.epochs or _calibrate(base, budget.minutes, len(candidates), work, fit)
    board = []
    for name, (method, params) in candidates.items():
        if on_candidate is not None:
            on_candidate(name)
        out = work / f"{name}.pt"
        started = time.perf_counter()
        fit(TrainConfig.from_dict({**base, "out": str(out), "epochs": epochs, "method": method,
                                   "method_params": params}))
        row = {"candidate": name, "method": method, "params": params, "epochs": epochs,
               "train_seconds": round(time.perf_counter() - started, 1)}
        row.update(score(config.old_model, str(out), val_dir, config.seed))
        board.append(row)
        log.info("auto: %s margin %+.4f new/new %.4f", name, row["margin"], row["new_new"])
    board.sort(key=rank_key, reverse=True)
    for rank, row in enumerate(board, 1):
        row["rank"] = rank
    winner = board[0]
    files = write_leaderboard(config, board, split, epochs)
    final = fit(TrainConfig.from_dict({**config.to_dict(), "method": winner["method"],
                                       "method_params": winner["params"]}))
    result = AutoResult(board, winner["candidate"], epochs, final.to_dict(), files)
    config.sibling(".auto.json").write_text(json.dumps(
        {**result.to_dict(), "split": split}, indent=2, default=str) + "\n")
    return result


def _calibrate(base: dict, minutes: float, count: int, work: Path, fit) -> int:
    """Epochs per candidate that fit `minutes` for the whole search, from one timed epoch."""
    started = time.perf_counter()
    fit(TrainConfig.from_dict({**base, "out": str(work / "calibration.pt"), "epochs": 1,
                               "method": "independent", "method_params": {}}))
    seconds = time.perf_counter() - started
    epochs = math.floor((minutes * 60 - seconds) / (count * max(seconds, 1e-6)))
    log.info("auto: one epoch took %.1f s; %d epoch(s) per candidate", seconds, max(1, epochs))
    return max(1, epochs)


def markdown(board: list[dict], metric: str) -> str:
    lines = [f"| rank | candidate | method | params | epochs | old/old | new/new | new->old | "
             f"margin ({metric}) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in board:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['rank']} | {r['candidate']} | {r['method']} | {params} | {r['epochs']} "
                     f"| {r['old_old']:.4f} | {r['new_new']:.4f} | {r['new_old']:.4f} "
                     f"| {r['margin']:+.4f} |")
    return "\n".join(lines) + "\n"


def write_leaderboard(config: TrainConfig, board: list[dict], split: dict, epochs: int) -> dict:
    metric = board[0]["metric"]
    paths = {k: config.sibling(f".leaderboard.{k}") for k in ("json", "md", "png")}
    paths["json"].write_text(json.dumps({"metric": metric, "epochs_per_candidate": epochs,
                                         "split": split, "leaderboard": board}, indent=2) + "\n")
    paths["md"].write_text(markdown(board, metric))
    _plot(board, paths["png"], metric)
    return {k: str(v) for k, v in paths.items()}


def _plot(board: list[dict], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["candidate"] for r in board][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * len(board) + 1.5), sharey=True)
    axes[0].barh(names, [r["margin"] for r in board][::-1],
                 color=["tab:green" if r["margin"] > 0 else "tab:red" for r in board][::-1])
    axes[0].axvline(0, color="black", linewidth=0.8)
    axes[0].set_xlabel(f"criterion margin (new->old - old/old, {metric})")
    axes[1].barh(names, [r["new_new"] for r in board][::-1], color="tab:blue")
    axes[1].set_xlabel(f"new/new ({metric})")
    fig.suptitle("train-compatible --method auto: validation identities (rank 1 at the top)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
