"""Per-version dimensions in one store (issue 20): rows of an 8-d v1 and a 12-d v2, overlay
vectors of either (an adapter's, a real backfill's), a v2 with an old-space output; search
per group against a naive numpy reference; enrol, verify, migrate and the schema number."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.preprocess import l2_normalize
from gallery.rollout import adapt, state
from gallery.search import search
from gallery.store import ModelInfo, Store, overlays, schema, spaces
from gallery.store import manifest as store_manifest  # hand edits keep its checksum valid
from gallery.store.migrations import migrate_path

D1, D2 = 8, 12


@dataclass
class LinearAdapter:
    """What the store needs of an adapter (gallery/adapter.py): apply, dims, identity, path."""

    weights: np.ndarray
    path: Path

    @property
    def from_dim(self) -> int:
        return self.weights.shape[0]

    @property
    def to_dim(self) -> int:
        return self.weights.shape[1]

    @property
    def identity(self) -> dict:
        return {"sha256": "ab" * 32}

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return l2_normalize(l2_normalize(vectors) @ self.weights)


def _rows(rng, n, dim):
    return rng.normal(size=(n, dim)).astype(np.float32)


def _two_dim_store(path: Path, metadata: dict | None = None) -> dict:
    """v1 (8-d) rows i0..i39, v2 (12-d) registered, rows n0..n29; v2 the query model."""
    rng = np.random.default_rng(0)
    v1, v2 = _rows(rng, 40, D1), _rows(rng, 30, D2)
    with Store.create(path, ModelInfo(version="v1", dim=D1, model_id="m1")) as st:
        st.enroll(v1, [f"i{i}" for i in range(40)], [f"p{i % 10}" for i in range(40)], batch_size=16)
        st.add_model(ModelInfo(version="v2", dim=D2, model_id="m2", metadata=metadata or {}))
        st.enroll(v2, [f"n{i}" for i in range(30)], [f"p{i % 10}" for i in range(30)], model_version="v2")
        with st.transaction():
            state.set_parent(st, "v2", "v1")
            st.set_active_model("v2")
        st.set_threshold("v2", "v2", 0.1)
        st.set_threshold("v2", "v1", 0.3)
    return {"v1": l2_normalize(v1), "v2": l2_normalize(v2), "rng": rng}


def _reference(query: np.ndarray, vectors: dict[int, np.ndarray], models: dict[int, str],
               thresholds: dict[str, float], k: int) -> tuple[list[int], list[float]]:
    """Brute force: every compared row's cosine, ranked by the margin over its pair's threshold."""
    q = query / np.linalg.norm(query)
    scored = [(float(q @ v), r) for r, v in vectors.items()]
    scored.sort(key=lambda sr: -(sr[0] - thresholds[models[sr[1]]]))
    return [r for _, r in scored[:k]], [s for s, _ in scored[:k]]


def test_adapter_overlays_backfills_and_per_group_search_match_brute_force(tmp_path):
    path = tmp_path / "g"
    data = _two_dim_store(path)
    rng = data["rng"]
    weights = rng.normal(size=(D1, D2)).astype(np.float32)
    mapper = LinearAdapter(weights, tmp_path / "a.onnx")
    with Store.open(path, "a") as st:
        assert st.schema_version == schema.SCHEMA_VERSION and spaces.mixed(st)
        st.remove(["i3", "n4"])
        with st.transaction():
            adapt.start(st, "v2", "v1", mapper)
        adapt.run(st, "v2", mapper, block_rows=7)
        with st.transaction():
            adapt.finish(st, "v2")
        # a real backfill of rows 5 and 6 (their images re-embedded by v2) wins over the adapter
        real = l2_normalize(_rows(rng, 2, D2))
        with st.transaction():
            overlays.add_rows(st, "v2", np.array([5, 6]), real, ["h5", "h6"])
            st.commit()
        # v1 rows enrolled after the run have no v2 vector: not compared
        st.enroll(_rows(rng, 3, D1), ["late0", "late1", "late2"], model_version="v1")
        assert st.verify()["ok"], st.verify()["problems"]
    with Store.open(path) as st:
        queries = _rows(rng, 6, D2)
        result = search(st, queries, k=9)
        assert result.not_compared == {"v1": 3}
        vectors = {r: l2_normalize(mapper.apply(data["v1"][r:r + 1]))[0] for r in range(40) if r != 3}
        vectors.update({5: real[0], 6: real[1]})
        vectors.update({40 + i: data["v2"][i] for i in range(30) if i != 4})
        models = {r: ("v2" if r >= 40 or r in (5, 6) else "v1") for r in vectors}
        for qi, q in enumerate(queries):
            rows, scores = _reference(q, vectors, models, {"v2": 0.1, "v1": 0.3}, 9)
            assert result.rows[qi].tolist() == rows
            np.testing.assert_allclose(result.scores[qi], scores, atol=1e-5)
            assert result.models[qi].tolist() == [models[r] for r in rows]
            np.testing.assert_allclose(result.thresholds[qi], [{"v2": 0.1, "v1": 0.3}[models[r]] for r in rows])
        # the v1 query model sees its own rows only (8-d), raw: what it saw before the upgrade
        old = search(st, _rows(rng, 2, D1), k=5, query_version="v1")
        assert set(old.models.ravel()) == {"v1"} and old.not_compared == {"v2": 29}
        info = st.info()
        assert info["per_model"] == {"v1": 40, "v2": 31}  # adapted rows still report v1


def test_old_space_group_and_its_refusal_without_projected_queries(tmp_path):
    path = tmp_path / "g"
    data = _two_dim_store(path, metadata={spaces.OLD_SPACE_DIM: str(D1)})
    rng = data["rng"]
    with Store.open(path) as st:
        groups = spaces.groups(st)
        assert groups.direct.tolist() == list(range(40, 70)) and groups.old_space.tolist() == list(range(40))
        q, oq = _rows(rng, 4, D2), _rows(rng, 4, D1)
        result = search(st, q, k=6, old_space_queries=oq)
        models = {r: ("v1" if r < 40 else "v2") for r in range(70)}
        for qi in range(4):
            both = [(float(l2_normalize(oq[qi:qi + 1])[0] @ data["v1"][r]) - 0.3, r) for r in range(40)]
            both += [(float(l2_normalize(q[qi:qi + 1])[0] @ data["v2"][r - 40]) - 0.1, r) for r in range(40, 70)]
            both.sort(key=lambda mr: -mr[0])
            assert result.rows[qi].tolist() == [r for _, r in both[:6]]
            assert result.models[qi].tolist() == [models[r] for _, r in both[:6]]
        alone = search(st, q, k=6)  # embedding queries without the projection: v1 rows left out
        assert alone.not_compared == {"v1": 40} and set(alone.models.ravel()) == {"v2"}
        with pytest.raises(BadInput, match="old-space queries"):
            search(st, q, k=2, old_space_queries=oq[:2])


def test_enrol_checks_the_enrolling_models_dim_and_verify_checks_every_file(tmp_path):
    path = tmp_path / "g"
    _two_dim_store(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with Store.open(path, "a") as st:
        with pytest.raises(BadInput, match="dimension 8, model v2 of .* gives 12"):
            st.enroll(np.ones((2, D1), np.float32), ["x", "y"], model_version="v2")
        with pytest.raises(BadInput, match="dimension 12, store .* has 8"):
            st.enroll(np.ones((2, D2), np.float32), ["x", "y"], model_version="v1")
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name != "LOCK"} == \
        {k: v for k, v in before.items() if k != "LOCK"}
    manifest = store_manifest.load(path)
    manifest["models"]["v2"]["dim"] = 13  # a record that lies about v2's rows
    store_manifest.commit(path, manifest, durable=False)
    with Store.open(path) as st:
        problems = st.verify()["problems"]
    assert any("holds 12-d vectors" in p and "model v2 is 13-d" in p for p in problems), problems


def test_overlay_of_the_wrong_dim_is_refused_and_reported(tmp_path):
    path = tmp_path / "g"
    _two_dim_store(path)
    with Store.open(path, "a") as st:
        with pytest.raises(BadInput, match="dimension 8, model v2 has 12"):
            overlays.add_rows(st, "v2", np.array([0]), np.ones((1, D1), np.float32) / np.sqrt(D1), ["h"])
        with st.transaction():
            overlays.add_rows(st, "v2", np.array([0]), np.ones((1, D2), np.float32) / np.sqrt(D2), ["h"])
            st.commit()
    manifest = store_manifest.load(path)
    manifest["models"]["v2"]["dim"] = 8
    store_manifest.commit(path, manifest, durable=False)
    with Store.open(path) as st:
        problems = st.verify()["problems"]
    assert any("overlay file" in p and "12-d vectors, v2 is 8-d" in p for p in problems), problems


def test_schema_v3_store_is_read_bumped_by_migrate_and_by_a_second_dim(tmp_path):
    def as_v3(path: Path) -> None:
        manifest = store_manifest.load(path)
        manifest["schema_version"] = 3
        store_manifest.commit(path, manifest, durable=False)

    rng = np.random.default_rng(1)
    one = tmp_path / "one"
    with Store.create(one, ModelInfo(version="v1", dim=D1, model_id="m1")) as st:
        st.enroll(_rows(rng, 5, D1), list("abcde"))
    as_v3(one)
    with Store.open(one) as st:
        assert st.schema_version == 3 and search(st, _rows(rng, 1, D1), k=2).rows.shape == (1, 2)
    assert migrate_path(one) == {"path": str(one), "schema_version": 4, "migrated": True, "from": 3}
    assert migrate_path(one)["migrated"] is False
    with Store.open(one, "a") as st:
        assert st.schema_version == 4 and st.history()[-1]["event"] == "migrate" and st.verify()["ok"]
    as_v3(one)
    with Store.open(one, "a") as st:
        st.add_model(ModelInfo(version="v2", dim=D1, model_id="m2"))
        assert st.schema_version == 3  # same dim: a v3 reader still reads it right
        st.add_model(ModelInfo(version="v3", dim=D2, model_id="m3"))
    with Store.open(one) as st:
        assert st.schema_version == 4 and st.model("v3").dim == D2 and st.dim == D1


def test_served_pairs_are_the_comparable_ones(tmp_path):
    from gallery.thresholds import served_pairs

    path = tmp_path / "g"
    data = _two_dim_store(path)
    with Store.open(path) as st:  # v2 (12-d) cannot compare with 8-d v1 rows yet, nor v1 with v2's
        assert served_pairs(st) == [("v1", "v1"), ("v2", "v2")]
    mapper = LinearAdapter(data["rng"].normal(size=(D1, D2)).astype(np.float32), tmp_path / "a.onnx")
    with Store.open(path, "a") as st:
        with st.transaction():
            adapt.start(st, "v2", "v1", mapper)
        adapt.run(st, "v2", mapper)
    with Store.open(path) as st:
        assert served_pairs(st) == [("v1", "v1"), ("v2", "v1"), ("v2", "v2")]
    projecting = tmp_path / "p"
    _two_dim_store(projecting, metadata={spaces.OLD_SPACE_DIM: str(D1)})
    with Store.open(projecting) as st:
        assert served_pairs(st) == [("v1", "v1"), ("v2", "v1"), ("v2", "v2")]
