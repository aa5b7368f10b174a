"""Identity and image splits for the compatibility protocol (docs/compat.md).

open-class: the old model's identities, the new model's identities and the
evaluation identities are disjoint sets. open-data: old and new models see the
same identities but disjoint images of each. Everything is a pure function of a
seed, so a split is reproduced exactly from its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gallery.errors import BadInput

SCENARIOS = ("open-class", "open-data")


@dataclass(frozen=True)
class IdentitySplit:
    old: list[str]
    new: list[str]
    eval: list[str]

    @property
    def train(self) -> list[str]:
        return sorted(self.old + self.new)


def split_identities(
    names: Sequence[str], count: int, eval_fraction: float, old_fraction: float, seed: int
) -> IdentitySplit:
    """Pick `count` identities at random and cut them into disjoint old/new/eval sets."""
    if count > len(names):
        raise BadInput(f"asked for {count} identities but only {len(names)} are available")
    _check_fraction("eval fraction", eval_fraction)
    _check_fraction("old fraction", old_fraction)
    order = np.random.default_rng([seed, 0x1D]).permutation(len(names))
    picked = [names[i] for i in order[:count]]
    n_eval = int(round(eval_fraction * count))
    n_old = int(round(old_fraction * (count - n_eval)))
    split = IdentitySplit(
        old=sorted(picked[n_eval : n_eval + n_old]),
        new=sorted(picked[n_eval + n_old :]),
        eval=sorted(picked[:n_eval]),
    )
    for part in ("old", "new", "eval"):
        if len(getattr(split, part)) < 2:
            raise BadInput(
                f"{count} identities leave fewer than 2 {part} identities; "
                "raise --identities or change the fractions"
            )
    return split


def split_open_data(labels: np.ndarray, old_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random old_fraction of the rows go to old, the rest to new.

    Returns sorted row indices (old, new); every class with >= 2 rows appears in both.
    """
    _check_fraction("old fraction", old_fraction)
    rng = np.random.default_rng([seed, 0x0D])
    old_rows, new_rows = [], []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(len(rows))]
        n_old = open_data_old_count(len(rows), old_fraction)
        old_rows.append(rows[:n_old])
        new_rows.append(rows[n_old:])
    return np.sort(np.concatenate(old_rows)), np.sort(np.concatenate(new_rows))


def open_data_old_count(n: int, old_fraction: float) -> int:
    """How many of an identity's n images the old model gets (at least 1 each side when n >= 2)."""
    if n < 2:
        return n
    return min(max(int(round(old_fraction * n)), 1), n - 1)


def parse_scenarios(text: str | Sequence[str]) -> tuple[str, ...]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    bad = [s for s in items if s not in SCENARIOS]
    if bad or not items:
        raise BadInput(f"unknown scenario(s) {bad or text!r}; valid: {', '.join(SCENARIOS)}")
    return tuple(dict.fromkeys(items))


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise BadInput(f"{name} must be between 0 and 1 (exclusive), got {value}")
