"""Rollout state kept in the store's manifest: which model each upgrade replaced (parents,
the lineage), who did what (history). An upgrade's parent entry, thresholds, model record
and query-model switch are one manifest commit (upgrade.py): never half-applied.
"""

from __future__ import annotations

import getpass
import socket
from typing import TYPE_CHECKING

from gallery.errors import BadInput
from gallery.store.overlays import lineage  # noqa: F401  (the lineage is the store's: overlays use it)

if TYPE_CHECKING:
    from gallery.store import Store

# Events the rollout writes, plus the store's own model events: what `gallery history` shows.
ROLLOUT_EVENTS = ("init", "add_model", "activate", "alias", "upgrade", "stage", "rollback",
                  "backfill", "prune", "migrate", "threshold", "calibrate", "model_path")


def actor() -> dict[str, str]:
    """Who is acting: recorded with every rollout event (audit trail of forced upgrades)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "unknown"
    return {"user": user, "host": socket.gethostname()}


def parents(store: "Store") -> dict[str, str]:
    return dict(store.manifest["parents"])


def set_parent(store: "Store", version: str, parent: str | None) -> None:
    """Record that `version` replaced `parent` as query model (None forgets it)."""
    store.require_writer()
    table = parents(store)
    if parent is None:
        table.pop(version, None)
    else:
        table[version] = parent
    store.manifest["parents"] = dict(sorted(table.items()))
    store.commit()


def previous_model(store: "Store", version: str | None = None) -> str:
    """The query model that `version` (default: active) replaced; BadInput when none."""
    current = store.resolve_version(version or store.active_model)
    chain = lineage(store, current)
    if len(chain) < 2:
        raise BadInput(f"model {current} of {store.path} did not replace another query model: "
                       "nothing to roll back to")
    previous = chain[-2]
    if previous not in store.model_versions():
        raise BadInput(f"previous model {previous} was pruned from {store.path}")
    return previous


def staged_model(store: "Store") -> str | None:
    """The version `upgrade --stage` registered and no upgrade or rollback has acted on since."""
    for event in reversed(store.history()):
        if event.get("event") in ("upgrade", "rollback"):
            return None
        if event.get("event") == "stage":
            staged = event.get("to")
            return staged if staged in store.model_versions() and staged != store.active_model else None
    return None


def record(store: "Store", event: str, **fields: object) -> dict:
    """Append a rollout event with the actor; returns the record."""
    entry = {"event": event, **actor(), **fields}
    store.append_history(entry)
    return entry


def rollout_history(store: "Store", everything: bool = False) -> list[dict]:
    events = store.history()
    return events if everything else [e for e in events if e.get("event") in ROLLOUT_EVENTS]
