"""Shared by the engine tests: a versioned store built through the store's API, the two
embedded engines, and the check that an engine holds exactly the store's live view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gallery import engines
from gallery.preprocess import l2_normalize
from gallery.rollout import overlay, state
from gallery.store import ModelInfo, Store

DIM = 16
KINDS = ["milvus", "qdrant"]


def unit(n: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def engine_uri(kind: str, root: Path) -> str:
    pytest.importorskip("pymilvus" if kind == "milvus" else "qdrant_client")
    return str(root / ("serve.db" if kind == "milvus" else "qdrant"))


def v1_store(path: Path, rows: int = 120, seed: int = 1, threshold: float = 0.3) -> Path:
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m1")) as st:
        st.enroll(unit(rows, seed), [f"a{i}" for i in range(rows)], [f"p{i % 12}" for i in range(rows)])
        st.set_threshold("v1", "v1", threshold)
    return path


def upgrade(st: Store) -> None:
    """What `gallery upgrade` leaves: v2 registered, its parent v1, v2 the query model, its thresholds."""
    st.add_model(ModelInfo(version="v2", dim=DIM, model_id="m2", compatible_with="m1"))
    state.set_parent(st, "v2", "v1")
    st.set_active_model("v2")
    st.set_threshold("v2", "v1", 0.25)
    st.set_threshold("v2", "v2", 0.35)
    st.set_threshold("v1", "v2", 0.3)


def backfill(st: Store, rows: np.ndarray, seed: int) -> None:
    """What `gallery backfill` commits: rows re-embedded by the query model (v2)."""
    overlay.start_plan(st, "v2", rows, {})
    overlay.commit_batch(st, "v2", rows, unit(len(rows), seed), ["0" * 64] * len(rows), cursor=len(rows))
    overlay.finish_plan(st, "v2")


def assert_serves_live_view(engine: engines.Engine, collection: str, st: Store) -> None:
    """The collection holds every live row, and only those, with the vector and version the
    store's query model searches."""
    rows, models, vectors = engine.scan(collection, st.committed)
    live = np.flatnonzero(~st.tombstones())
    assert rows.tolist() == live.tolist()
    assert models.tolist() == st.columns()["model"][live].tolist()
    np.testing.assert_allclose(vectors, st.embeddings(live), atol=1e-6)
