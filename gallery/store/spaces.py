"""Per-version dimensions: which rows a query model compares with, and in which space.

A store can hold rows of models of different dimensions (a 128-d v1 and a 512-d v2);
each model's `ModelInfo.dim` is authoritative and every row segment records its own
`dim` (the store-level `dim` is the first model's, kept for older readers). A query
model Q compares rows in groups:
- `direct`, in Q's own space (Q's dimension): rows whose stored vector has Q's
  dimension, and rows with an overlay vector in Q's space (a backfill by Q or by a model
  of its lineage with Q's dimension, or an adapter's h(v1 row), gallery/rollout/adapt.py);
- `old_space`: when Q declares an old-space output (a model trained with
  `train-compatible --dim`), the remaining rows of that output's dimension, compared
  with the raw stored vectors through Q's projection of the query;
- everything else is not comparable with Q's queries: counted per row model
  (`not_compared`), never searched.
In a store of one dimension every live row is direct: nothing here changes its search.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gallery.errors import BadInput
from gallery.store import overlays
from gallery.store.columns import column_rows, stored_models
from gallery.store.schema import ModelInfo

if TYPE_CHECKING:
    from gallery.store.core import Store

OLD_SPACE_DIM = "gallery.old_space_dim"  # metadata of a model exported by `train-compatible --dim`


@dataclass
class Groups:
    """The live rows a query model compares with, per group (sorted row numbers)."""

    version: str
    dim: int                       # the query model's dimension (the direct group's)
    direct: np.ndarray
    old_space: np.ndarray          # empty unless the model has an old-space output
    old_space_dim: int | None
    not_compared: dict[str, int] = field(default_factory=dict)  # row model -> live rows left out
    direct_models: set[str] = field(default_factory=set)     # the models the direct rows report
    old_space_models: set[str] = field(default_factory=set)


def model_dims(store: "Store") -> dict[str, int]:
    return {v: int(m["dim"]) for v, m in store.manifest["models"].items()}


def mixed(store: "Store") -> bool:
    """Whether the store holds models (or rows) of more than one dimension (asked by every
    search: cached for this manifest's models and segments)."""
    m = store.manifest
    key = ("mixed", len(m["models"]), len(m["segments"]))
    if key not in store._cache:
        dims = set(model_dims(store).values()) | {int(s.get("dim", store.dim)) for s in m["segments"]}
        store._cache[key] = len(dims) > 1
    return store._cache[key]


def model_dim(store: "Store", version: str | None = None) -> int:
    """A model version's (or alias's; default: the query model's) dimension."""
    return int(store.manifest["models"][store.resolve_version(version or store.active_model)]["dim"])


def old_space_dim(store: "Store", version: str | None = None) -> int | None:
    """The dimension of the model's old-space output (None when it has none)."""
    raw = store.manifest["models"][store.resolve_version(version or store.active_model)].get("metadata")
    try:
        return _old_space(raw if isinstance(raw, dict) else json.loads(raw or "{}"))
    except (ValueError, TypeError):
        return None


def old_space_dim_of(model: ModelInfo) -> int | None:
    """The same, of a model record not yet in a store."""
    return _old_space(model.metadata or {})


def _old_space(meta: dict) -> int | None:
    try:
        return int(meta.get(OLD_SPACE_DIM, 0)) or None
    except (ValueError, TypeError, AttributeError):
        return None


def comparable(store: "Store", query: str, rows: str) -> bool:
    """Whether queries of model `query` can compare with rows of model `rows` at all: one
    dimension, the query model's old-space output, or an adapter's vectors in its space."""
    dim, other = model_dim(store, query), model_dim(store, rows)
    if dim == other or old_space_dim(store, query) == other:
        return True
    return bool(overlays.adapted_of(store, store.resolve_version(query)).any())


def row_dims(store: "Store") -> np.ndarray:
    """(committed,) int32: the dimension of each row's stored vector (its segment's)."""
    if "row_dims" not in store._cache:
        segs = store.manifest["segments"]
        store._cache["row_dims"] = np.repeat(
            np.array([int(s.get("dim", store.dim)) for s in segs], np.int32),
            np.array([int(s["rows"]) for s in segs], np.int64)) if segs else np.empty(0, np.int32)
    return store._cache["row_dims"]


def groups(store: "Store", version: str | None = None) -> Groups:
    """The groups of live rows queries of `version` (default: the query model) compare with."""
    version = store.resolve_version(version or store.active_model)
    key = ("groups", version)
    if key in store._cache:
        return store._cache[key]
    deleted = store.tombstones()  # reads' snapshot (reads builds on this module)
    n = deleted.size
    dim = model_dim(store, version)
    live = ~deleted
    if not mixed(store):
        out = Groups(version, dim, np.flatnonzero(live), np.empty(0, np.int64), old_space_dim(store, version))
        store._cache[key] = out
        return out
    dims = row_dims(store)
    direct = dims == dim
    over = overlays.view_rows(store, version)
    direct[over[over < n]] = True
    rest = live & ~direct
    extra = old_space_dim(store, version)
    old = rest & (dims == extra) if extra else np.zeros(n, bool)
    left = rest & ~old
    names, codes = stored_models(store, n)

    def reported(mask: np.ndarray) -> dict[str, int]:
        counts = np.bincount(codes[mask], minlength=len(names))
        return {name: int(c) for name, c in zip(names, counts) if c}

    direct_models = set(reported(live & direct))
    if over.size:  # a backfilled row reports the model that re-embedded it
        direct_models |= set(overlays.view(store, version).versions.tolist())
    out = Groups(version, dim, np.flatnonzero(live & direct), np.flatnonzero(old), extra, reported(left),
                 direct_models, set(reported(old)))
    store._cache[key] = out
    return out


def raw_vectors(store: "Store", rows: np.ndarray) -> np.ndarray:
    """Stored vectors (float32) of rows that all have one dimension, in the order given."""
    rows = np.asarray(rows, np.int64)
    uniq, inverse = np.unique(rows, return_inverse=True)
    dims = np.unique(row_dims(store)[uniq])
    if len(dims) > 1:
        raise BadInput(f"rows of dimensions {', '.join(map(str, dims))} cannot be read as one array")
    return np.asarray(column_rows(store, "embedding", uniq), np.float32)[inverse.ravel()]


def vectors(store: "Store", rows: np.ndarray | None, version: str | None = None) -> np.ndarray:
    """Vectors of `rows` (None: every committed row) in `version`'s own space: stored
    vectors of its dimension, with overlay vectors (backfill, adapter) substituted.
    A row with no vector in that space -> BadInput naming it."""
    version = store.resolve_version(version or store.active_model)
    dim = model_dim(store, version)
    rows = np.arange(store.committed) if rows is None else np.asarray(rows, np.int64)
    out = np.full((rows.size, dim), np.nan, np.float32)
    same = row_dims(store)[rows] == dim if rows.size else np.zeros(0, bool)
    if same.any():
        out[same] = raw_vectors(store, rows[same])
    overlays.apply_embeddings(store, out, rows, version)
    missing = np.flatnonzero(np.isnan(out[:, 0])) if rows.size else np.empty(0, np.int64)
    if missing.size:
        r = int(rows[missing[0]])
        raise BadInput(f"row {r} ({int(row_dims(store)[r])}-d) has no vector in the {dim}-d space of {version}; "
                       f"{missing.size} such row(s)")
    return out


def require_one_dim(store: "Store", what: str) -> None:
    """Refuse an operation that handles one dimension only, on a store of several."""
    if mixed(store):
        dims = sorted(set(model_dims(store).values()))
        raise BadInput(f"{what} handles stores of one dimension; {store.path} holds models of "
                       f"{', '.join(map(str, dims))} dimensions")
