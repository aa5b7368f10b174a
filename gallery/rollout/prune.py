"""Drop model versions nothing needs any more (old models are kept until this runs).

A version is kept when it is the query model, an earlier query model the current
one can roll back to (unless `drop_rollback`), named by an alias, or recorded as
the model of any committed row (tombstoned rows included: `gallery verify` checks
that every row's model exists). Everything else goes, with its backfill overlay,
its parent entry and the thresholds other models hold for it, in one manifest commit;
the dropped overlay files are deleted by the next writer (or `gallery compact`).
"""

from __future__ import annotations

from pathlib import Path


from gallery.rollout import overlay, state
from gallery.store import Store, overlays
from gallery.store.columns import stored_models


def keep_reasons(store: Store, drop_rollback: bool = False) -> dict[str, str]:
    """version -> why it must stay."""
    reasons: dict[str, str] = {}
    for version in stored_models(store, store.committed)[0]:
        reasons.setdefault(str(version), "rows embedded by it")
    for alias, version in store.aliases.items():
        reasons.setdefault(version, f"alias {alias}")
    reasons[store.active_model] = "query model"
    for version in state.lineage(store)[:-1]:
        if not drop_rollback:
            reasons.setdefault(version, "rollback target")
        elif len(overlay.committed_rows(store, version)):
            # The query model sees these backfilled rows; dropping them would silently
            # put older embeddings back under its queries.
            reasons.setdefault(version, "backfilled rows on the query path")
    return reasons


def prune(store_path: str | Path, dry_run: bool = False, drop_rollback: bool = False) -> dict:
    with Store.open(store_path, "r" if dry_run else "a") as st:
        reasons = keep_reasons(st, drop_rollback)
        doomed = [v for v in st.model_versions() if v not in reasons]
        # Overlays of kept models that are no longer on the query path stay: an upgrade back uses them.
        result = {"removed": doomed, "kept": reasons, "dry_run": dry_run, "overlay_rows_dropped": 0}
        if dry_run or not doomed:
            return result
        with st.transaction():  # one commit: no model half-removed
            for version in doomed:
                result["overlay_rows_dropped"] += overlays.drop(st, version)
                st.manifest["models"].pop(version)
                state.set_parent(st, version, None)
            parents = state.parents(st)
            for child, parent in parents.items():
                if parent in doomed:
                    state.set_parent(st, child, None)
            for info in st.models():
                stale = [g for g in info.thresholds if g in doomed]
                if stale:
                    for g in stale:
                        del info.thresholds[g]
                    st.update_model(info)
            st.invalidate()
            state.record(st, "prune", removed=doomed, overlay_rows_dropped=result["overlay_rows_dropped"])
        return result
