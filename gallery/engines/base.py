"""What a serving engine must do for gallery, and how its failures reach the user.

An engine holds *serving views*: one collection per query model, holding every live row
of the store as that query model sees it (the vector it searches, the version that made
it, item id, identity, enrol time) plus, in the collection's own metadata, the view
record (query model, thresholds per row model, versions present). Readers query an
alias that names the complete view in service (see sync.py).

Every engine call goes through `Engine.call`, so a failure is one line naming the
engine and the operation (`EngineError`, exit 2).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from gallery.errors import BadInput
from gallery.registry import Registry

T = TypeVar("T")

VIEW_FORMAT = "gallery.serving-view/1"


class EngineError(BadInput):
    """An engine operation failed (unreachable, missing collection, dim mismatch...)."""


@dataclass
class Rows:
    """One engine batch of a serving view: store rows and what the engine keeps per row."""

    rows: np.ndarray         # int64 store row numbers (primary key / point id)
    vectors: np.ndarray      # (n, dim) float32, unit length: the vector the query model searches
    models: np.ndarray       # str: the version that made each vector
    item_ids: np.ndarray     # str
    identities: np.ndarray   # str
    enrolled_at: np.ndarray  # float64 unix time

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Hits:
    """An engine's top-k per query, as arrays shaped (nq, k); -1 / -inf where no hit."""

    scores: np.ndarray
    rows: np.ndarray
    ids: np.ndarray
    identities: np.ndarray
    models: np.ndarray


class Engine:
    """One connection to a Milvus or Qdrant deployment (server URL or embedded local file)."""

    name = "engine"
    # Scalar fields kept per row (the row number is the primary key / point id).
    FIELDS = ("item_id", "identity", "model_version", "enrolled_at")

    def __init__(self, uri: str) -> None:
        self.uri = uri

    # ---- errors --------------------------------------------------------------------
    def call(self, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call; any failure becomes one EngineError line."""
        try:
            return fn(*args, **kwargs)
        except EngineError:
            raise
        except Exception as exc:  # the clients raise their own, transport and ValueError types
            raise EngineError(f"{self.name} {operation} failed ({self.uri}): {one_line(exc)}") from None

    def fail(self, operation: str, reason: str) -> EngineError:
        return EngineError(f"{self.name} {operation} failed ({self.uri}): {reason}")

    # ---- what each engine implements ------------------------------------------------
    def close(self) -> None: ...
    def exists(self, collection: str) -> bool: raise NotImplementedError
    def create_view(self, collection: str, dim: int, versions: list[str], index: str) -> None:
        raise NotImplementedError
    def dim(self, collection: str) -> int: raise NotImplementedError
    def vector_names(self, collection: str) -> set[str] | None:
        """Versions a view can hold vectors of (None: any, one vector field)."""
        return None
    def upsert(self, collection: str, rows: Rows) -> None: raise NotImplementedError
    def delete(self, collection: str, rows: np.ndarray) -> None: raise NotImplementedError
    def settle(self, collection: str) -> None:
        """After a sync's writes: let the engine seal and index them (no-op by default)."""
    def models_in(self, collection: str, lo: int, hi: int) -> dict[int, str]:
        """row -> model version of the rows lo <= row < hi the collection holds."""
        raise NotImplementedError
    def scan(self, collection: str, upto: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row below `upto` held: (rows ascending, model versions, vectors). For checks
        and tests."""
        raise NotImplementedError
    def meta(self, collection: str) -> dict | None: raise NotImplementedError
    def set_meta(self, collection: str, meta: dict) -> None: raise NotImplementedError
    def alias_target(self, alias: str) -> str | None: raise NotImplementedError
    def point_alias(self, alias: str, collection: str) -> None: raise NotImplementedError
    def drop(self, collection: str) -> None: raise NotImplementedError
    def search(self, collection: str, queries: np.ndarray, k: int, versions: list[str],
               params: dict | None = None) -> Hits:
        raise NotImplementedError
    def knobs(self, ef_search: int | None, nprobe: int | None) -> dict:
        """gallery's search knobs as this engine's search parameters."""
        return {}

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ENGINES: Registry = Registry("engine")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^<\w+: \((.*)\)>$", r"\1", text)  # pymilvus wraps code=..., message=...
    return text[:300]


def local_path(uri: str) -> str | None:
    """The absolute path of an embedded (file) deployment; None for a server URL."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        return None
    return str(Path(uri).expanduser().resolve())


def safe_name(text: str) -> str:
    """A collection-name part from a version or store name: Milvus allows letters, digits and
    '_' only (and a leading letter or '_'); a changed name gets a short hash so two versions
    never share one."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if clean != text:
        clean += "_" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return clean if re.match(r"^[A-Za-z_]", clean) else "_" + clean


def pad_hits(nq: int, k: int) -> Hits:
    return Hits(scores=np.full((nq, k), -np.inf, np.float32), rows=np.full((nq, k), -1, np.int64),
                ids=np.full((nq, k), "", object), identities=np.full((nq, k), "", object),
                models=np.full((nq, k), "", object))


def fill(hits: Hits, q: int, ranked: list[tuple[float, int, str, str, str]]) -> None:
    """Put query q's hits (score, row, item id, identity, model), best first, into `hits`;
    equal scores in row order (faiss's flat order), so both sides list ties alike."""
    ranked = sorted(ranked, key=lambda h: (-h[0], h[1]))[: hits.rows.shape[1]]
    for j, (score, row, item, identity, model) in enumerate(ranked):
        hits.scores[q, j], hits.rows[q, j] = score, row
        hits.ids[q, j], hits.identities[q, j], hits.models[q, j] = item, identity, model
