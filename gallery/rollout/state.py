"""Rollout state kept inside the store: which model each upgrade replaced, who did what.

Layout (additive; stores without it behave as before):
  /rollout                 group, attrs: parents (JSON {version: version it replaced})
  /rollout/backfill/<v>    rows re-embedded by model <v> (see overlay.py)

The parent map is written *before* the query model is switched, and the switch
(`Store.set_active_model`, one attribute write) is the commit point: a crash in
between leaves an unused parent entry, never a half-switched store.
"""

from __future__ import annotations

import getpass
import json
import socket
from typing import TYPE_CHECKING

from gallery.errors import BadInput

if TYPE_CHECKING:
    from gallery.store import Store

GROUP = "rollout"
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
    if GROUP not in store.h5:
        return {}
    return json.loads(store.h5[GROUP].attrs.get("parents", "{}"))


def set_parent(store: "Store", version: str, parent: str | None) -> None:
    """Record that `version` replaced `parent` as query model (None forgets it)."""
    store.require_writer()
    table = parents(store)
    if parent is None:
        table.pop(version, None)
    else:
        table[version] = parent
    group = store.h5.require_group(GROUP)
    group.attrs["parents"] = json.dumps(table, sort_keys=True)
    store.h5.flush()


def lineage(store: "Store", version: str | None = None) -> list[str]:
    """[oldest ancestor, ..., version]: the query models `version` descends from by upgrades."""
    table = parents(store)
    chain = [store.resolve_version(version or store.active_model)]
    while chain[-1] in table and table[chain[-1]] not in chain:  # guard against a cycle
        chain.append(table[chain[-1]])
    return chain[::-1]


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
