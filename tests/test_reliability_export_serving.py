"""Serving exports keep model versions: Qdrant (local mode, the real client) answers like
the store, with per-version named vectors; the Milvus bulk-insert files hold the store's
serving view and, searched per partition key, answer like the store too."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.export_serving import export_milvus, export_qdrant, query_qdrant, version_vectors
from gallery.preprocess import l2_normalize
from gallery.rollout import overlay, state
from gallery.store import ModelInfo, Store

DIM = 16


def _unit(n: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM)))


@pytest.fixture()
def store(tmp_path):
    """v1 rows, v2 rows enrolled after an upgrade, 10 v1 rows backfilled by v2, 2 removed."""
    path = tmp_path / "g.h5"
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m1")) as st:
        st.enroll(_unit(120, 1), [f"a{i}" for i in range(120)], [f"p{i % 12}" for i in range(120)])
        st.add_model(ModelInfo(version="v2", dim=DIM, model_id="m2", compatible_with="m1"))
        state.set_parent(st, "v2", "v1")
        st.set_active_model("v2")
        st.enroll(_unit(30, 2), [f"b{i}" for i in range(30)], model_version="v2")
        rows = np.arange(10, 20)
        overlay.start_plan(st, "v2", rows, {})
        overlay.commit_batch(st, "v2", rows, _unit(10, 3).astype(np.float32), ["0" * 64] * 10, cursor=10)
        overlay.finish_plan(st, "v2")
        st.remove(["a0", "a15"])
    return path


def test_version_vectors_hold_originals_and_backfills(store):
    with Store.open(store) as st:
        per = version_vectors(st)
        raw = np.asarray(st.h5["items"]["embedding"][:], np.float32)
    assert sorted(per) == ["v1", "v2"]
    v1_rows, v1_vecs = per["v1"]
    assert v1_rows.tolist() == [r for r in range(120) if r not in (0, 15)]
    np.testing.assert_allclose(v1_vecs, raw[v1_rows], atol=1e-6)  # original v1 vectors kept
    v2_rows, v2_vecs = per["v2"]
    assert v2_rows.tolist() == list(range(120, 150)) + [r for r in range(10, 20) if r != 15]
    np.testing.assert_allclose(v2_vecs[30:], np.delete(_unit(10, 3), 5, axis=0), atol=1e-6)


def test_qdrant_local_answers_like_the_store(store):
    qdrant_client = pytest.importorskip("qdrant_client")
    client = qdrant_client.QdrantClient(":memory:")
    with Store.open(store) as st:
        result = export_qdrant(st, client, "faces")
        queries = np.vstack([_unit(5, 2), _unit(4, 3), _unit(5, 1)[:5]])  # hits in every region
        expected = st.search(queries, k=8, kind="flat")
    assert result["points"] == 148 and result["vectors"] == {"v1": 118, "v2": 39}
    point = client.retrieve("faces", [12], with_vectors=True)[0]
    assert sorted(point.vector) == ["v1", "v2"] and point.payload["model_version"] == "v2"
    assert point.payload["enrolled_version"] == "v1" and point.payload["item_id"] == "a12"
    for q, ids, scores in zip(queries, expected.ids, expected.scores):
        hits = query_qdrant(client, "faces", q, 8, ["v1", "v2"])
        assert [h[2] for h in hits] == ids.tolist()
        np.testing.assert_allclose([h[0] for h in hits], scores, atol=1e-5)
    with pytest.raises(BadInput, match="already exists"):
        with Store.open(store) as st:
            export_qdrant(st, client, "faces")


def test_milvus_files_are_the_serving_view(store, tmp_path):
    with Store.open(store) as st:
        result = export_milvus(st, tmp_path / "milvus")
        queries = _unit(6, 2)
        expected = st.search(queries, k=5, kind="flat")
    files = {name: np.load(tmp_path / "milvus" / f"{name}.npy", allow_pickle=False)
             for name in ("row", "item_id", "identity", "model_version", "enrolled_version", "embedding")}
    schema = json.loads((tmp_path / "milvus" / "schema.json").read_text())
    assert result["rows"] == 148 and files["embedding"].shape == (148, DIM)
    assert [f["name"] for f in schema["fields"]] == ["row", "item_id", "identity", "enrolled_version",
                                                     "model_version", "embedding"]
    row12 = files["row"] == 12
    assert files["model_version"][row12][0] == "v2" and files["enrolled_version"][row12][0] == "v1"
    # What Milvus does per partition key (cosine, filter model_version), merged: numpy reference.
    for q, ids in zip(queries, expected.ids):
        hits = []
        for v in ("v1", "v2"):
            mask = files["model_version"] == v
            sims = files["embedding"][mask] @ q
            hits += list(zip(sims, files["item_id"][mask]))
        assert [h[1] for h in sorted(hits, key=lambda h: -h[0])[:5]] == ids.tolist()
    with pytest.raises(BadInput, match="already exists"):
        with Store.open(store) as st:
            export_milvus(st, tmp_path / "milvus")
