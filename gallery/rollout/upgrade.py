"""Upgrade the query model of a live gallery from a check-compat report, and roll it back.

Every check runs on a read-only handle first, so a refused upgrade (failed gate,
report for other models, bad file) leaves the store byte-identical. The checks
are repeated under the writer lock (the store may have moved on meanwhile); the
query model is switched last, by one attribute write (`Store.set_active_model`):
everything an upgrade writes (model record, thresholds, lineage, switch, history) is one
manifest commit (Store.transaction), as is a rollback.

Thresholds: the report calibrates one per (query, gallery) comparison. The new
model's pairs (new->old, new/new) and old->new (used by old queries against new
rows after a rollback) are stored. The old model's own old/old threshold is left
as the operator set it, so a rollback restores today's behaviour exactly; only when
it has none is the report's old/old stored (an uncalibrated pair never accepts a
hit, so without it the old query path would reject everything). The result names
the served pairs still uncalibrated (gallery.thresholds; Gallery.upgrade adds them to its result).

A model of another dimension (docs/adapters.md) needs a route to the old rows: an adapter
(`adapter`: its metadata names both models, the report scored it; the old rows are mapped
block by block by adapt.py between a first commit that registers the model and the last
one that switches, so a kill resumes with the same command), or the model's own old-space
projection output (`train-compatible --dim`). The pair (new, old) then takes the report's
new -> h(old), or old-space new -> old, threshold.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

from gallery import modelfiles
from gallery.adapter import load_adapter
from gallery.compat import signing, verdicts
from gallery.compat.report import load_report
from gallery.encoder import load_encoder
from gallery.errors import BadInput, GateFailed
from gallery.fingerprint import file_sha256
from gallery.compat.checker import OLD_SPACE
from gallery.rollout import adapt, state
from gallery.store import ModelInfo, Store, spaces
from gallery.store.schema import check_version_name

log = logging.getLogger(__name__)

REPORT_KEYS = ("schema_version", "created", "passed", "failed_gates", "gates", "models", "criterion",
               "gain", "headline", "new_drop")


def gate_failures(report: dict) -> list[str]:
    """Why a report does not admit an upgrade ([] = it does)."""
    reasons = [f"gate {name} failed" for name in report.get("failed_gates", [])]
    if not report["passed"] and not reasons:
        reasons.append("report says passed=false")
    # A report that requested no gates would pass vacuously: then the criterion is the gate.
    if not report.get("gates") and not report.get("criterion", {}).get("passed", False):
        crit = report.get("criterion", {})
        reasons.append(f"no gates requested and the criterion fails (new->old {crit.get('new_to_old')} "
                       f"<= old/old {crit.get('old_old')})")
    return reasons


def _same_file(ident: dict, info: ModelInfo) -> bool:
    if info.sha256 is not None:
        return ident.get("sha256") == info.sha256
    # Embedding-only galleries have no file: their model is named by model_id.
    return info.model_id is not None and ident.get("model_id") == info.model_id


def _mismatch(role: str, ident: dict, info: ModelInfo) -> str:
    have = info.sha256 or info.model_id
    got = ident.get("sha256") if info.sha256 else ident.get("model_id")
    hint = ""
    if info.model_id and ident.get("model_id") == info.model_id:
        hint = " (same weights, different file: rerun check-compat with that file)"
    return (f"compat report's {role} model ({str(got)[:12]}...) is not {info.version} "
            f"({str(have)[:12]}...){hint}")


def _next_version(store: Store) -> str:
    taken = set(store.model_versions()) | set(store.aliases)
    n = len(taken) + 1
    while f"v{n}" in taken:
        n += 1
    return f"v{n}"


def _route(store: Store, report: dict, old: ModelInfo, new: ModelInfo, adapter: Any) -> str:
    """How the new model's queries will meet the old model's rows: "direct" (one space),
    "adapter" (the adapter's overlay vectors) or "old_space" (the new model's projection
    output); one clear refusal when none applies or the adapter is not for these models."""
    scored = report["models"].get("adapted")
    if adapter is not None:
        if (adapter.from_dim, adapter.to_dim) != (old.dim, new.dim):
            raise BadInput(f"adapter {adapter.path.name} maps {adapter.from_dim}-d -> {adapter.to_dim}-d, but the query "
                           f"model {old.version} of {store.path} is {old.dim}-d and --model {new.dim}-d")
        adapter.check_models({"sha256": old.sha256, "model_id": old.model_id},
                             {"sha256": new.sha256, "model_id": new.model_id})
        if not scored or scored.get("sha256") != adapter.identity["sha256"]:
            raise BadInput(f"compat report did not score adapter {adapter.path.name} (run check-compat with "
                           "--adapter on that file)")
        return "adapter"
    if scored:
        raise BadInput(f"compat report scored new -> h(old) through adapter {str(scored.get('path'))!r}; "
                       "give that adapter with --adapter")
    if new.dim == old.dim:
        return "direct"
    if spaces.old_space_dim_of(new) == old.dim:
        return "old_space"
    raise BadInput(f"--model gives {new.dim}-d embeddings, the query model {old.version} of {store.path} gives "
                   f"{old.dim}-d: give --adapter (from `gallery train-adapter`) or a model trained with "
                   f"`train-compatible --dim` (an old_space output)")


def _plan(store: Store, report: dict, new: ModelInfo, version: str | None, adapter: Any = None) -> dict:
    """Every check of an upgrade; returns what would be written. Reads only."""
    old = store.model()
    route = _route(store, report, old, new, adapter)
    if not _same_file(report["models"]["old"], old):
        raise BadInput(_mismatch("old", report["models"]["old"], old) + f", the query model of {store.path}")
    if report["models"]["new"].get("sha256") != new.sha256:
        got = report["models"]["new"]
        hint = (" (same weights, different file: rerun check-compat with that file)"
                if new.model_id and got.get("model_id") == new.model_id else "")
        raise BadInput(f"compat report's new model ({str(got.get('sha256'))[:12]}...) is not the file given "
                       f"with --model {new.path} ({str(new.sha256)[:12]}...){hint}")
    existing = [m.version for m in store.models() if m.sha256 == new.sha256]
    if old.version in existing:
        raise BadInput(f"{new.path} is already the query model ({old.version}) of {store.path}")
    target = existing[0] if existing else (version or _next_version(store))
    if existing and version not in (None, target):
        raise BadInput(f"{new.path} is already registered as {target}, not {version}")
    if not existing:
        check_version_name(target)
        if target in store.aliases:
            raise BadInput(f"version name {target!r} is an alias in {store.path}")
    roles = {"old": old.version, "new": target}
    if route == "adapter":  # new queries meet old rows as h(old row): that pair's threshold
        roles["adapted"] = old.version
    elif route == "old_space":  # ... or through the new model's projection to the old space
        roles[OLD_SPACE] = target
    thresholds, unsupported = [], []
    for entry in report["thresholds"]:
        q, g = roles.get(entry["query"]), roles.get(entry["gallery"])
        if q is None or g is None:
            continue  # reference model pairs
        if route == "adapter" and (entry["query"], entry["gallery"]) == ("new", "old"):
            continue  # raw new -> old is not how this store will compare them
        if (q, g) == (old.version, old.version) and old.version in old.thresholds:
            continue  # old/old is the operator's own setting once there is one
        value = entry["threshold"]
        if value is None or not math.isfinite(float(value)):
            continue
        thresholds.append((q, g, float(value), entry.get("far")))
        if entry.get("supported") is False:
            unsupported.append(f"{q}->{g}")
    return {"old": old.version, "new": target, "register": not existing, "thresholds": thresholds,
            "unsupported": unsupported, "failures": gate_failures(report), "route": route}


def _summary(report: dict, path: Path, digest: str) -> dict:
    """What the store keeps of the report that admitted a model (not its curves)."""
    kept = {k: report.get(k) for k in REPORT_KEYS}
    kept["thresholds"] = [{k: e.get(k) for k in ("query", "gallery", "threshold", "far", "supported")}
                          for e in report["thresholds"]]
    return {"path": str(path.resolve()), "sha256": digest, **kept}


def check_report(report: dict, sign_key: str | Path | None = None, require_signed: bool = False) -> dict:
    """Every check a report passes before it may admit a model; what ran, for history.

    Its verdicts are recomputed from its own numbers (gallery/compat/verdicts.py) and,
    with a key, its HMAC is checked (gallery/compat/signing.py). The model hashes are
    matched against the store and --model afterwards, in `_plan`."""
    key = signing.read_key(sign_key) if sign_key is not None else None
    signature = signing.verify(report, key, require_signed)
    ran = ["schema", *verdicts.check_report(report), "model-sha256"]
    tool = report.get("tool") if isinstance(report.get("tool"), dict) else {}
    return {"ran": ran + (["signature"] if signature == "verified" else []), "signature": signature,
            "report_tool_version": tool.get("version")}


def _registered_new(store: Store, report: dict) -> str | None:
    """The version of the store that is the report's new model (by sha256), if any."""
    sha = report["models"]["new"].get("sha256")
    return next((m.version for m in store.models() if sha and m.sha256 == sha), None)


def upgrade(store_path: str | Path, model_path: str | Path, report_path: str | Path,
            version: str | None = None, force: bool = False, stage: bool = False,
            sign_key: str | Path | None = None, require_signed: bool = False,
            allow_missing_model: bool = False, adapter: str | Path | None = None,
            batch_size: int = adapt.BLOCK_ROWS, progress: Callable[[int], None] | None = None,
            on_total: Callable[[int], None] | None = None) -> dict:
    """Register `model_path` (if new), store its thresholds and make it the query model.

    `stage` stops before the switch: the model is registered with its thresholds, so
    `gallery shadow --new VERSION` can compare it before the cut-over; running the
    upgrade again without `stage` then only switches. `sign_key`/`require_signed`:
    see `check_report`. When the report's new model is already registered (staged, or
    upgrading again after a rollback) and `model_path` is missing or another model, the
    upgrade is refused like a rollback (gallery.modelfiles.require) unless
    `allow_missing_model`: then it switches to the registered version, which serves
    embedding queries only until `gallery model set-path`. A model not registered yet is
    registered from its file, so it needs one. `adapter` (a model of another
    dimension, or one not trained to be compatible): the old model's rows are mapped into
    the new space first (adapt.py; killable, rerun the same upgrade to resume),
    `batch_size` rows per commit, then the query model is switched.
    """
    report_path, model_path = Path(report_path), Path(model_path)
    report = load_report(report_path)
    checks = check_report(report, sign_key, require_signed)
    if batch_size < 1:
        raise BadInput(f"--batch-size must be >= 1, got {batch_size}")
    mapper = load_adapter(adapter) if adapter is not None else None
    missing = None
    with Store.open(store_path, "r") as st:
        registered = _registered_new(st, report)
        if registered is not None and registered != st.active_model:  # (the active one: _plan refuses)
            missing = modelfiles.require(st, registered, allow_missing_model, model_path,
                                         remedy="give that model's file with --model")
        if missing is not None:
            info = st.model(registered)  # its record as it is: no file to read the model from
        elif not model_path.is_file():
            raise BadInput(f"model file not found: {model_path}")
        else:
            info = ModelInfo.from_encoder(version or "pending", load_encoder(model_path))
            info.path = str(model_path.resolve())
        plan = _plan(st, report, info, version, mapper)
    if plan["failures"] and not force:
        raise GateFailed(f"upgrade refused: {'; '.join(plan['failures'])} (report {report_path}); "
                         "--force overrides and is recorded in the store's history")
    digest = file_sha256(report_path)
    with Store.open(store_path, "a") as st:
        plan = _plan(st, report, info, version, mapper)  # again, under the lock
        summary = {**_summary(report, report_path, digest), "checks": checks}
        if mapper is None:
            with st.transaction():  # registration, thresholds, lineage, switch, record: one commit
                return _apply(st, plan, info, summary, force, stage, missing)
        with st.transaction():  # the model (not yet queried) and the rows to map: one commit
            _register(st, plan, info, summary)
            adapt.start(st, plan["new"], plan["old"], mapper)
        mapped = adapt.run(st, plan["new"], mapper, batch_size, progress=progress, on_total=on_total)
        with st.transaction():  # the end of the run, the switch and its record: one commit
            adapt.finish(st, plan["new"])
            plan["register"] = False
            return _apply(st, plan, info, summary, force, stage, missing,
                          adapter={**mapper.describe(), "rows": mapped["planned"], "resumed_at": mapped["resumed_at"]})


def _register(st: Store, plan: dict, info: ModelInfo, summary: dict) -> None:
    """The new model's record (or its new file path) and every threshold of the plan."""
    old, new = plan["old"], plan["new"]
    per_model: dict[str, dict[str, float]] = {}
    for q, g, value, _ in plan["thresholds"]:
        per_model.setdefault(q, {})[g] = value
    if plan["register"]:
        info.version = new
        info.thresholds.update(per_model.pop(new, {}))
        info.compat_report = summary
        st.add_model(info)
    elif st.model(new).path != info.path:  # remember where the given file is now
        record = st.model(new)
        record.path = info.path
        st.update_model(record)
    for q, table in per_model.items():
        record = st.model(q)
        record.thresholds.update(table)
        if q == new:
            record.compat_report = summary
        st.update_model(record)


def _apply(st: Store, plan: dict, info: ModelInfo, summary: dict, force: bool, stage: bool,
           missing_model: str | None = None, adapter: dict | None = None) -> dict:
    old, new = plan["old"], plan["new"]
    _register(st, plan, info, summary)
    if not stage:
        state.set_parent(st, new, old)
        st.set_active_model(new)  # committed with everything above (the caller's transaction)
    forced_over = plan["failures"] if force else []
    result = state.record(
        st, "stage" if stage else "upgrade", **{"from": old, "to": new, "registered": plan["register"],
                          "report": {k: summary[k] for k in ("path", "sha256", "passed", "failed_gates", "checks")},
                          "forced": bool(forced_over), "forced_over": forced_over,
                          "thresholds": [{"query": q, "gallery": g, "threshold": v, "far": far}
                                         for q, g, v, far in plan["thresholds"]],
                          "unsupported_far": plan["unsupported"], "route": plan["route"],
                          "missing_model": missing_model, **({"adapter": adapter} if adapter else {})})
    if missing_model is not None:
        log.warning("upgrade of %s to %s without its model file (--allow-missing-model): %s", st.path, new,
                    missing_model)
    if forced_over:
        log.warning("upgrade of %s forced over: %s", st.path, "; ".join(forced_over))
    return result


def rollback(store_path: str | Path, to: str | None = None, allow_missing_model: bool = False) -> dict:
    """Make the model the current one replaced the query model again (one manifest commit).

    Refused (store untouched) when the target's model file is missing or is not that model,
    unless `allow_missing_model` (the store then serves embedding queries only)."""
    with Store.open(store_path, "a") as st:
        current = st.active_model
        target = st.resolve_version(to) if to else state.previous_model(st)
        if target == current:
            raise BadInput(f"{target} is already the query model of {store_path}")
        if target not in state.lineage(st, current):
            chain = " -> ".join(state.lineage(st, current))
            raise BadInput(f"{target} is not an earlier query model of {current} (lineage {chain})")
        modelfiles.require(st, target, allow_missing_model)
        with st.transaction():  # the switch and its record: one commit
            st.set_active_model(target)
            return state.record(st, "rollback", **{"from": current, "to": target})


def set_alias(store_path: str | Path, name: str, version: str | None) -> dict:
    """Point alias `name` at a version (None removes it); aliases pin models against prune."""
    with Store.open(store_path, "a") as st:
        if version is None and name not in st.aliases:
            raise BadInput(f"no alias {name!r} in {store_path}; aliases: {', '.join(st.aliases) or 'none'}")
        st.set_alias(name, version)
        return {"alias": name, "model": st.aliases.get(name), "aliases": st.aliases}


def list_aliases(store_path: str | Path) -> dict[str, str]:
    with Store.open(store_path, "r") as st:
        return st.aliases


def history(store_path: str | Path, everything: bool = False) -> list[dict]:
    with Store.open(store_path, "r") as st:
        return state.rollout_history(st, everything)
