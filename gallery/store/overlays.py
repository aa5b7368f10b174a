"""Backfilled rows: embeddings re-made by a newer model, kept beside the original rows.

The storage side of gallery/rollout/backfill.py. A backfill never rewrites a committed row:
each of its commits adds an overlay segment (segments.py: row, embedding, content_hash)
to manifest["overlays"][version]["files"], together with the run's plan cursor, in one
manifest commit. So
- the store's batch checksums still hold for the original rows;
- a rollback is exact: the overlay of a model applies only while that model (or a model
  that upgraded from it) is the query model, per manifest["parents"] (the lineage);
- readers see whole commits only, like every other change.

An overlay segment's `provenance` says what made its vectors: "backfill" (the model
itself, from the row's image; records without the field are backfills) or "adapter" (an
adapter's h(stored vector), gallery/rollout/adapt.py). A row can have both; the real
backfill wins. A row an adapter mapped keeps reporting the model that embedded it (its
threshold is the calibrated (query, row model) pair: new -> h(old)).

An unfinished run's plan (the rows it visits, in order) is a plan file listed in
manifest["overlays"][version]["plan"] (a backfill) or ["adapter_plan"] (an adapter run)
with its cursor and settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gallery.errors import BadInput
from gallery.store import manifest as mf
from gallery.store import segments
from gallery.store.columns import stored_models
from gallery.store.schema import PLAN_KEYS

ADAPTER = "adapter"
BACKFILL = "backfill"

if TYPE_CHECKING:
    from gallery.store.core import Store


@dataclass
class OverlayView:
    """Rows re-embedded by models in the query model's lineage (latest wins)."""

    rows: np.ndarray        # (m,) int64 store rows, unique
    versions: np.ndarray    # (m,) str: the model that re-embedded each row
    embedding: np.ndarray   # (m, dim) float32, unit length


def lineage(store: "Store", version: str | None = None) -> list[str]:
    """[oldest ancestor, ..., version]: the query models `version` descends from by upgrades."""
    table = store.manifest["parents"]
    chain = [store.resolve_version(version or store.active_model)]
    while chain[-1] in table and table[chain[-1]] not in chain:  # guard against a cycle
        chain.append(table[chain[-1]])
    return chain[::-1]


def versions(store: "Store") -> list[str]:
    """Versions with an overlay (rows or an unfinished plan)."""
    return sorted(store.manifest["overlays"])


def record(store: "Store", version: str) -> dict | None:
    return store.manifest["overlays"].get(version)


def count(store: "Store", version: str) -> int:
    over = record(store, version)
    return 0 if over is None else sum(int(f["rows"]) for f in over["files"])


def version_dim(store: "Store", version: str) -> int:
    """The dimension of `version`'s vectors (its model record; the store's for an unknown one)."""
    model = store.manifest["models"].get(version)
    return int(model["dim"]) if model else store.dim


def provenance(record: dict) -> str:
    return str(record.get("provenance", BACKFILL))


def _read(store: "Store", version: str, dataset: str) -> np.ndarray:
    key = ("overlay", version, dataset)
    if key not in store._cache:
        over = record(store, version)
        files = [f for f in (over["files"] if over else []) if f["rows"]]
        if dataset == "adapted":  # bool per row: made by an adapter
            parts = [np.full(int(f["rows"]), provenance(f) == ADAPTER) for f in files]
        else:
            parts = [store._files.read(f["file"], dataset) for f in files]
        if parts:
            value = np.concatenate(parts)
        elif dataset == "embedding":
            value = np.empty((0, version_dim(store, version)), np.float32)
        else:
            value = np.empty(0, {"row": np.int64, "adapted": bool}.get(dataset, "S64"))
        store._cache[key] = value
    return store._cache[key]


def adapted_of(store: "Store", version: str) -> np.ndarray:
    """bool per overlay row of `version` (in rows_of order): its vector is an adapter's."""
    return _read(store, version, "adapted")


def rows_of(store: "Store", version: str) -> np.ndarray:
    return _read(store, version, "row")


def embeddings_of(store: "Store", version: str) -> np.ndarray:
    return np.asarray(_read(store, version, "embedding"), np.float32)


def _pick(store: "Store", version: str | None):
    """view()'s rows (ascending), versions, and positions into the lineage overlays'
    concatenated embeddings; or None."""
    present = [v for v in versions(store) if count(store, v)]
    chain = lineage(store, version)
    # only overlays in the query model's own space (a lineage can change dimension)
    dim = version_dim(store, chain[-1])
    chain = [v for v in chain if version_dim(store, v) == dim]
    if not present or not set(present) & set(chain):
        return None
    rank = {v: i for i, v in enumerate(chain)}
    n_rows = store.committed
    names_, codes = stored_models(store, n_rows)  # one decode per run of equal rows, not per row
    base = np.array([rank.get(m, -1) for m in names_], np.int64)[codes]
    rows, names, parts = [], [], []
    for v in chain:
        if v not in present:
            continue
        r = rows_of(store, v)
        # a version's adapter rows first: its real backfill of the same row comes later and wins
        order = np.argsort(~adapted_of(store, v), kind="stable")
        r, adapted = r[order], adapted_of(store, v)[order]
        use = (r < n_rows) & (base[np.minimum(r, max(n_rows - 1, 0))] < rank[v]) if n_rows else r < 0
        rows.append(r[use])
        shown = np.full(int(use.sum()), v, dtype=object)
        mapped = adapted[use]
        if mapped.any():  # an adapted row reports the model that embedded it
            shown[mapped] = np.asarray(names_, dtype=object)[codes[r[use][mapped]]]
        names.append(shown)
        parts.append((v, order[use]))
    all_rows = np.concatenate(rows)
    if not all_rows.size:
        return None
    # Later lineage entries (newer models) win: keep the last occurrence of each row.
    _, last = np.unique(all_rows[::-1], return_index=True)
    keep = len(all_rows) - 1 - last  # in ascending row order
    return all_rows[keep], np.concatenate(names)[keep].astype(str), parts, keep


def view(store: "Store", version: str | None = None) -> OverlayView | None:
    """The overlay seen by queries of `version` (default: the active model), or None.

    Each row shows the embedding of the latest model of the lineage that made one: its
    original (if that model is in the lineage) or a backfill.
    """
    key = ("overlay_view", version or store.active_model)
    if key not in store._cache:
        picked = _pick(store, version)
        if picked is None:
            store._cache[key] = None
        else:
            rows, names, parts, keep = picked
            blocks = [embeddings_of(store, v)[positions] for v, positions in parts]
            store._cache[key] = OverlayView(rows, names, np.concatenate(blocks)[keep])
    return store._cache[key]


def view_rows(store: "Store", version: str | None = None) -> np.ndarray:
    """The rows view() substitutes for queries of `version`, without reading embeddings."""
    if not store.manifest["overlays"]:
        return np.empty(0, np.int64)
    cached = store._cache.get(("overlay_view", version or store.active_model))
    if cached is not None:
        return cached.rows
    picked = _pick(store, version)
    return np.empty(0, np.int64) if picked is None else picked[0]


def active_models(store: "Store") -> tuple[np.ndarray, np.ndarray] | None:
    """(rows ascending, version that re-embedded each) of the active model's overlay, or
    None: what a row's `model` reports, without reading the overlay's embeddings."""
    if not store.manifest["overlays"]:
        return None  # the common case: no backfill has happened, no cost
    if "overlay_models" not in store._cache:
        cached = store._cache.get(("overlay_view", store.active_model))
        picked = (cached.rows, cached.versions) if cached is not None else _pick(store, None)
        store._cache["overlay_models"] = None if picked is None else (picked[0], picked[1])
    return store._cache["overlay_models"]


def apply_models(store: "Store", rows: np.ndarray, models: np.ndarray) -> np.ndarray:
    """`models` of the ascending `rows`, with rows re-embedded for the active model
    reporting the version that re-embedded them."""
    shown = active_models(store)
    if shown is None or not rows.size:
        return models
    v_rows, v_versions = shown
    pos = np.minimum(np.searchsorted(v_rows, rows), len(v_rows) - 1)
    hit = v_rows[pos] == rows
    if not hit.any():
        return models
    out = models.astype(object)
    out[hit] = v_versions[pos[hit]]
    return out.astype(str)


def apply_embeddings(store: "Store", out: np.ndarray, rows: np.ndarray | None,
                     version: str | None = None) -> np.ndarray:
    """Substitute re-embedded rows into `out` (all committed rows, or `rows`)."""
    if not store.manifest["overlays"]:
        return out
    v = view(store, version)
    if v is None or not len(v.rows):
        return out
    n = store.committed
    where = np.full(n, -1, np.int64)
    inside = v.rows < n
    where[v.rows[inside]] = np.flatnonzero(inside)
    pick = where if rows is None else where[np.asarray(rows, np.int64)]
    hit = pick >= 0
    out[hit] = v.embedding[pick[hit]]
    return out


def checksum_part(store: "Store") -> str:
    """What the searchable content depends on beyond the committed batches."""
    if not store.manifest["overlays"]:
        return ""
    counts = {v: count(store, v) for v in versions(store)}
    return json.dumps({"lineage": lineage(store), "overlay": counts}, sort_keys=True)


def check(store: "Store") -> list[str]:
    """Integrity of every overlay: vectors of its model's dimension, rows in range and
    unique per provenance, vectors finite and unit length."""
    problems = []
    for v in versions(store):
        dim = version_dim(store, v)
        try:
            widths = {f["file"]: store._files.get(f["file"])["embedding"].shape[1] if f["rows"] else dim
                      for f in record(store, v)["files"]}
            wrong = [f for f in record(store, v)["files"] if widths[f["file"]] != dim or int(f.get("dim", dim)) != dim]
            for f in wrong:
                problems.append(f"overlay file {f['file']} of {v} holds {widths[f['file']]}-d vectors, {v} is {dim}-d")
            if wrong:
                continue
            rows, emb = rows_of(store, v), embeddings_of(store, v)
        except segments.Damaged as exc:
            problems.append(str(exc))
            continue
        n = count(store, v)
        if len(rows) != n or len(emb) != n:
            problems.append(f"backfill {v}: files hold {len(rows)} rows, the manifest says {n}")
            continue
        if n and (rows.min() < 0 or rows.max() >= store.committed):
            problems.append(f"backfill {v}: row numbers outside 0..{store.committed - 1}")
        adapted = adapted_of(store, v)
        for made_by, mask in ((BACKFILL, ~adapted), (ADAPTER, adapted)):
            if len(np.unique(rows[mask])) != int(mask.sum()):
                problems.append(f"{made_by} overlay of {v}: a row has two vectors")
        if n and (not np.isfinite(emb).all() or np.abs(np.linalg.norm(emb, axis=1) - 1).max() > 1e-2):
            problems.append(f"backfill {v}: embeddings not finite unit vectors")
    return problems


# ---- writing (the caller commits: Store.commit / a transaction) --------------------------
def _entry(store: "Store", version: str) -> dict:
    return store.manifest["overlays"].setdefault(version, {"files": [], "plan": None})


def check_space(store: "Store", rows: int, dim: int, extra: int = 0, made_by: str = BACKFILL) -> None:
    """Refuse overlay rows the disk cannot hold before anything is written: `rows` rows of
    `dim` (embedding, row number and content hash, HDF5 overhead), `extra` bytes, headroom."""
    need = rows * (dim * np.dtype(store.dtype).itemsize + 72) + extra + (1 << 20)
    mf.check_space(store.dir, need, f"writing {rows} {made_by} rows", store.path)


def add_rows(store: "Store", version: str, rows: np.ndarray, embedding: np.ndarray, hashes: list[str],
             made_by: str = BACKFILL) -> None:
    """Write one overlay segment of `version`'s vectors and list it (committed by the caller)."""
    store.require_writer()
    if not len(rows):
        return
    dim = version_dim(store, version)
    if embedding.shape[1] != dim:
        raise BadInput(f"{made_by} vectors have dimension {embedding.shape[1]}, model {version} has {dim}")
    check_space(store, len(rows), dim, made_by=made_by)  # again per publish: the disk may be filling
    with store.write_files() as new:
        name = new.name("ovl")
        written = segments.write_overlay(store.dir, name, rows, embedding, hashes, store.durable)
        _entry(store, version)["files"].append(dict(written, rows=int(len(rows)), dim=dim, provenance=made_by))


def set_plan(store: "Store", version: str, rows: np.ndarray | None, meta: dict | None = None,
             cursor: int = 0, key: str = "plan") -> None:
    """Fix (rows given), advance (rows None, cursor) or end (cursor < 0) a run's plan
    (`key`: "plan" for a backfill, "adapter_plan" for an adapter run)."""
    store.require_writer()
    assert key in PLAN_KEYS, key
    over = _entry(store, version)
    if rows is not None:
        with store.write_files() as new:
            name = new.name("plan")
            written = segments.write_array(store.dir, name, np.asarray(rows, np.int64), store.durable)
            over[key] = {**dict(written), "rows": int(len(rows)), "cursor": 0, "meta": meta or {}}
    elif cursor < 0:
        over[key] = None
    else:
        over[key]["cursor"] = int(cursor)


def plan(store: "Store", version: str, key: str = "plan") -> tuple[np.ndarray, int, dict] | None:
    """(plan rows, cursor, plan meta) of an unfinished run, or None."""
    over = record(store, version)
    if over is None or not over.get(key):
        return None
    p = over[key]
    return segments.read_array(store.dir, p, store.path, store._small.get(p["file"])), int(p["cursor"]), \
        dict(p["meta"])


def drop(store: "Store", version: str) -> int:
    """Unlist a version's overlay (prune); returns how many rows it held."""
    store.require_writer()
    held = count(store, version)
    store.manifest["overlays"].pop(version, None)
    return held
