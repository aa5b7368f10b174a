"""Decision thresholds through a model version's whole life: which (query model, row model)
pairs a store serves, which of them lack a threshold, and calibrating them.

A store serves a pair (Q, R) when Q can be the query model (the active one, the ones a
rollback returns to, a staged one) and rows embedded by R are in the gallery (or will be:
Q's own enrolments). Search never accepts a hit of an uncalibrated pair (gallery.search),
so every served pair needs a threshold for open-set answers: `calibrate` measures them on
labelled images with check-compat's protocol (same pairs, same FAR), or copies them from a
check-compat report whose models are the store's. Everything is computed on a read-only
handle first and written in one writer session, so a refused calibration changes nothing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

from gallery.compat.checker import CheckConfig, open_protocols, pair_threshold
from gallery.compat.report import load_report
from gallery.compat.verdicts import check_report
from gallery.encoder import load_registered
from gallery.errors import BadInput
from gallery.preprocess import l2_normalize
from gallery.rollout import state
from gallery.store import Store, overlays, spaces

log = logging.getLogger(__name__)



def query_models(store: Store) -> list[str]:
    """Versions that can be the query model: the active one, its rollback lineage, a staged one."""
    versions = state.lineage(store)
    staged = state.staged_model(store)
    if staged is not None and staged not in versions:
        versions.append(staged)
    return [v for v in versions if v in store.model_versions()]


def row_models(store: Store) -> list[str]:
    """Versions that embedded live rows (as stored, or re-embedded by a backfill)."""
    found = {v for v, n in store.info()["per_model"].items() if n} | set(overlays.versions(store))
    return sorted(v for v in found if v in store.model_versions())


def served_pairs(store: Store) -> list[tuple[str, str]]:
    """Every (query model, row model) pair a search of this store can compare."""
    rows = row_models(store)
    return [(q, r) for q in query_models(store) for r in sorted(set(rows) | {q}) if spaces.comparable(store, q, r)]


def uncalibrated(store: Store, served: list[tuple[str, str]] | None = None) -> list[str]:
    """`query->rows` names of the served pairs (given, or read now) without a threshold."""
    pairs = served_pairs(store) if served is None else served
    return [f"{q}->{r}" for q, r in pairs if r not in store.thresholds(q)]


def pair_fars(store: Store) -> dict[tuple[str, str], float | None]:
    """The FAR each pair's threshold was calibrated at, from the history event that set it
    last (calibrate, upgrade/stage from a report; None when set by hand)."""
    fars: dict[tuple[str, str], float | None] = {}
    for event in store.history():
        kind = event.get("event")
        if kind == "calibrate":
            for t in event.get("thresholds", []):
                fars[(t["query"], t["rows"])] = t.get("far", event.get("target_far"))
        elif kind in ("upgrade", "stage"):
            for t in event.get("thresholds", []):
                fars[(t["query"], t["gallery"])] = t.get("far")
        elif kind == "threshold":
            fars[(event["query"], event["gallery"])] = None
    return fars


def table(store: Store) -> list[dict]:
    """One entry per served pair (and per other stored threshold): value, or None when
    uncalibrated, and the FAR it was calibrated at (None: set by hand or unknown)."""
    served, fars = served_pairs(store), pair_fars(store)
    out = [{"query": q, "rows": r, "threshold": store.thresholds(q).get(r), "served": True} for q, r in served]
    for info in store.models():
        for r, value in sorted(info.thresholds.items()):
            if (info.version, r) not in served:
                out.append({"query": info.version, "rows": r, "threshold": value, "served": False})
    for entry in out:
        entry["far"] = fars.get((entry["query"], entry["rows"])) if entry["threshold"] is not None else None
    return out


def show(store: Store) -> dict:
    """The query model, every served pair with its threshold (None: uncalibrated) and the
    uncalibrated ones by name."""
    return {"store": str(store.path), "active_model": store.active_model, "pairs": table(store),
            "uncalibrated": uncalibrated(store)}


def set_threshold(store: Store, query: str, rows: str, value: float) -> dict:
    """Set one pair's threshold by hand on a writer handle (recorded in history)."""
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise BadInput(f"threshold must be a cosine score in [-1, 1], got {value}")
    q, r = store.resolve_version(query), store.resolve_version(rows)
    # Every read before the commit: the served pairs read the row-model column, and a read
    # that fails after the commit (a damaged segment) would fail a command that changed the store.
    served = served_pairs(store)
    store.set_threshold(query, rows, value)
    return {"query": q, "rows": r, "threshold": float(value), "uncalibrated": uncalibrated(store, served)}


def _from_report(store: Store, report_path: str | Path) -> list[dict]:
    """The report's thresholds whose two models are both versions of this store (by sha256)."""
    report = load_report(report_path)
    check_report(report)  # thresholds finite cosines, verdicts consistent (gallery/compat/verdicts.py)
    by_sha = {m.sha256: m.version for m in store.models() if m.sha256}
    by_id = {m.model_id: m.version for m in store.models() if m.model_id and not m.sha256}
    roles = {}
    for role, ident in report["models"].items():
        version = by_sha.get(ident.get("sha256")) or by_id.get(ident.get("model_id"))
        if version is not None:
            roles[role] = version
    if not roles:
        raise BadInput(f"compat report {report_path} is about none of the models of {store.path}")
    out = []
    for entry in report["thresholds"]:
        q, r = roles.get(entry["query"]), roles.get(entry["gallery"])
        value = entry.get("threshold")
        if q is None or r is None or value is None or not math.isfinite(float(value)):
            continue
        out.append({"query": q, "rows": r, "threshold": float(value), "far": entry.get("far"),
                    "supported": entry.get("supported"), "source": str(report_path)})
    return out


def _from_data(store: Store, data: str | Path, target_far: float, pairs_wanted: list[tuple[str, str]],
               batch_size: int, progress: Callable[[int], None] | None,
               seed: int, impostor_pairs: int, detect: bool | None = None,
               detector: str | Path | None = None) -> tuple[list[dict], list[str]]:
    """Embed the evaluation set once per model and calibrate each wanted pair on its impostor pairs.
    Face models get detected, aligned crops as check-compat gives them; photos without a face
    are left out for every model (the pairs are drawn over the rest)."""

    if not 0.0 < target_far < 1.0:
        raise BadInput(f"--target-far must be in (0, 1), got {target_far}")
    protocol = CheckConfig(seed=seed, impostor_pairs=impostor_pairs).protocol()
    evalset, pairs = open_protocols(str(data), protocol)
    skipped, encoders = [], {}
    for version in sorted({v for pair in pairs_wanted for v in pair}):
        if not store.model(version).has_encoder:
            skipped.append(f"{version} is embedding-only (no encoder to embed the evaluation images)")
            continue
        encoders[version] = load_registered(store.model(version), store.path)
    log.info("embedding %d evaluation items with %s", evalset.num_items, ", ".join(encoders))
    done = evalset.embed_roles(encoders, batch_size, progress, detect, detector)
    if done.kept is not None:
        log.warning("%d evaluation items without a face left out (first: %s)", len(done.errors),
                    done.errors[0]["item"])
        evalset = evalset.subset(done.kept)
        pairs = evalset.pair_protocol(protocol)
    units = {version: l2_normalize(evalset.to_units(array)) for version, array in done.items.items()}
    out = []
    for q, r in pairs_wanted:
        if q in units and r in units and units[q].shape[1] != units[r].shape[1]:
            # compared through an adapter or a projection: its threshold comes from the report
            skipped.append(f"{q}->{r} compares models of two dimensions: calibrate it with --report "
                           "(the check-compat report that scored the adapter or projection)")
        elif q in units and r in units:
            entry = pair_threshold(units[q], units[r], pairs, target_far)
            out.append({"query": q, "rows": r, **entry, "source": str(data)})
    return out, skipped


def calibrate(store_path: str | Path, data: str | Path | None = None, report: str | Path | None = None,
              target_far: float = 1e-4, batch_size: int = 64,
              progress: Callable[[int], None] | None = None, seed: int = 0,
              impostor_pairs: int = 100_000, detect: bool | None = None,
              detector: str | Path | None = None) -> dict:
    """Calibrate every served pair from labelled images (`data`) or copy them from a `report`.
    Face models: photos detected + aligned unless detect=False (as check-compat)."""
    if (data is None) == (report is None):
        raise BadInput("give either --data EVAL (labelled images) or --report REPORT.json")
    if data is not None and not Path(data).exists():
        raise BadInput(f"evaluation data not found: {data}")
    with Store.open(store_path, "r") as st:
        wanted = served_pairs(st)
        if report is not None:
            entries, skipped = [e for e in _from_report(st, report) if (e["query"], e["rows"]) in wanted], []
        else:
            entries, skipped = _from_data(st, data, target_far, wanted, batch_size, progress,
                                          seed, impostor_pairs, detect, detector)
    if not entries:
        raise BadInput(f"nothing to calibrate in {store_path}: " + ("; ".join(skipped) or
                       "the report's models are not the store's served pairs"))
    with Store.open(store_path, "a") as st, st.transaction():  # thresholds and record: one commit
        per_query: dict[str, dict[str, float]] = {}
        for e in entries:
            per_query.setdefault(e["query"], {})[e["rows"]] = e["threshold"]
        for q, values in per_query.items():
            info = st.model(q)
            info.thresholds.update(values)
            st.update_model(info)
        st.append_history({"event": "calibrate", "source": str(report or data), "target_far": target_far,
                           "thresholds": [{k: e.get(k) for k in ("query", "rows", "threshold", "far")}
                                          for e in entries]})  # far: the data's target, or the report's
        missing = uncalibrated(st)
    return {"store": str(store_path), "calibrated": entries, "skipped": skipped, "uncalibrated": missing}
