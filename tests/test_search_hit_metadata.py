"""A search reads the metadata of its hit rows only (reads.values_at), never every row's
(reads.columns): results on a store with tombstones, v2 rows and a v2 backfill of v1 rows
equal a naive loop over store.columns(); search, count, info and sharded search never
call columns(); the faster string decode gives the same values, non-ASCII ids included."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.preprocess import l2_normalize
from gallery.rollout import overlay
from gallery.rollout.state import set_parent
from gallery.shards import ShardedGallery
from gallery.store import ModelInfo, Store, columns, reads
from gallery.index import store_index
from gallery.search import search

DIM = 16
NON_ASCII = ["José", "李雷", "Ünïcødé-😀", "ø" * 64, "日本" * 21 + "ab"]  # the last two fill all 128 bytes


def _unit(rng, n):
    return l2_normalize(rng.normal(size=(n, DIM))).astype(np.float32)


@pytest.fixture
def mixed(tmp_path):
    """v1 rows (some removed), v2 rows, every third live v1 row backfilled by v2 (some of
    those removed afterwards, once the index existed), pair thresholds for v2 queries."""
    rng = np.random.default_rng(0)
    path = tmp_path / "g.h5"
    v1_ids = NON_ASCII + [f"a{i}" for i in range(295)]
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m1"), dtype="float16") as st:
        st.enroll(_unit(rng, 300), v1_ids, [f"person{i % 30}" for i in range(300)], batch_size=64)
        st.remove([f"a{i}" for i in range(0, 295, 11)])
        st.add_model(ModelInfo(version="v2", dim=DIM, model_id="m2", compatible_with="m1"))
        set_parent(st, "v2", "v1")
        st.set_active_model("v2")
        st.enroll(_unit(rng, 100), [f"b{i}" for i in range(100)], [f"person{i % 40}" for i in range(100)],
                  model_version="v2")
        plan = np.flatnonzero(~st.tombstones()[:300])[::3]
        overlay.start_plan(st, "v2", plan, {})
        overlay.commit_batch(st, "v2", plan, _unit(rng, plan.size), ["0" * 64] * plan.size, cursor=plan.size)
        overlay.finish_plan(st, "v2")
        store_index(st)  # flat (small store); the removals below are masked in it, not rebuilt
        st.remove([v1_ids[plan[1]], v1_ids[plan[4]], "b3", "b50"])
        st.set_threshold("v2", "v2", 0.7)
        st.set_threshold("v2", "v1", 0.62)
    return path, l2_normalize(rng.normal(size=(40, DIM))).astype(np.float32), plan


def _naive_search(st: Store, q: np.ndarray, k: int) -> dict:
    """Exact k-NN over the live rows, metadata looked up in store.columns() one hit at a time."""
    cols, emb, table = st.columns(), st.embeddings(), st.thresholds(st.active_model)
    live = np.flatnonzero(~cols["deleted"])
    out = {name: [] for name in ("rows", "scores", "ids", "identities", "models", "match")}
    for query in q:
        scores = emb[live] @ query
        order = live[np.argsort(-scores, kind="stable")][:k]
        row = [int(r) for r in order] + [-1] * (k - len(order))
        out["rows"].append(row)
        out["scores"].append([float(emb[r] @ query) if r >= 0 else -np.inf for r in row])
        for name, column in (("ids", "id"), ("identities", "identity"), ("models", "model")):
            out[name].append([str(cols[column][r]) if r >= 0 else "" for r in row])
        best, best_margin = None, -np.inf
        for j, r in enumerate(row):
            limit = table.get(out["models"][-1][j])  # None: uncalibrated pair, never accepted
            if r >= 0 and limit is not None and out["scores"][-1][j] >= limit:
                margin = out["scores"][-1][j] - limit
                if margin > best_margin:
                    best, best_margin = out["identities"][-1][j], margin
        out["match"].append(best)
    return out


@pytest.mark.parametrize("k", [8, 500])  # 500: more than the live rows, so empty slots too
def test_search_equals_a_naive_loop_over_columns(mixed, k):
    path, q, plan = mixed
    with Store.open(path) as st:
        result = search(st, q, k=k)
        expected = _naive_search(st, q, k)
    assert result.rows.tolist() == expected["rows"]
    assert np.allclose(result.scores, expected["scores"], atol=1e-5)
    assert result.ids.tolist() == expected["ids"]
    assert result.identities.tolist() == expected["identities"]
    assert result.models.tolist() == expected["models"]
    assert result.match() == expected["match"]
    assert result.rejected.tolist() == [m is None for m in expected["match"]]
    hit = result.rows[result.rows >= 0]
    assert set(result.models[result.rows >= 0][np.isin(hit, plan)].tolist()) == {"v2"}  # backfilled rows
    assert {"v1", "v2"} <= set(result.models.ravel().tolist())
    assert 0 < result.rejected.sum() < len(q) or k == 500
    assert set(NON_ASCII) & set(result.ids.ravel().tolist()) or k == 8


def test_search_count_info_and_shards_never_decode_every_row(mixed, monkeypatch, tmp_path):
    path, q, _ = mixed
    with Store.open(path) as st:
        expected, cols = search(st, q, k=5), st.columns()
        live = ~cols["deleted"]
        per_model = dict(zip(*[a.tolist() for a in np.unique(cols["model"][live], return_counts=True)]))
    other = tmp_path / "other.h5"
    with Store.create(other, ModelInfo(version="v1", dim=DIM, model_id="m1")) as st:
        st.enroll(_unit(np.random.default_rng(1), 50), [f"s{i}" for i in range(50)])
    with Store.open(other) as st:
        other_cols = st.columns()

    def refuse(*args, **kwargs):
        raise AssertionError("columns() decodes every row")

    monkeypatch.setattr(reads, "columns", refuse)
    monkeypatch.setattr(Store, "columns", refuse)
    with Store.open(path) as st:
        result = search(st, q, k=5)
        assert st.count() == int(live.sum()) and st.info()["per_model"] == per_model
    for name in ("rows", "ids", "identities", "models", "thresholds", "scores"):
        assert np.array_equal(getattr(result, name), getattr(expected, name)), name
    with Store.open(path) as st, pytest.raises(AssertionError):
        st.columns()  # the patch is in force
    # Shards need the same model key: the v1 shard of `other` against a v1-only copy is enough.
    with ShardedGallery([other, other]) as shards:
        res = shards.search(q, k=3)
    assert res.ids.tolist() == [[str(other_cols["id"][r]) for r in row] for row in res.rows]
    assert res.models.tolist() == [["v1"] * 3] * len(q)


def test_values_at_equals_columns_for_any_rows(mixed):
    path, _, plan = mixed
    with Store.open(path) as st:
        cols, n = st.columns(), st.committed
        rows = np.random.default_rng(2).integers(0, n, (7, 9))
        rows[0, :3] = [0, n - 1, 0]
        for name in ("id", "identity", "model", "content_hash"):
            assert st.values_at(name, rows).tolist() == cols[name][rows].tolist()
        assert st.values_at("model", plan).tolist() == ["v2"] * plan.size
        assert st.values_at("enrolled_at", rows[0]).tolist() == cols["enrolled_at"][rows[0]].tolist()
        assert st.values_at("id", np.empty(0, np.int64)).size == 0
        for bad in ([-1], [n]):
            with pytest.raises(BadInput, match="out of range"):
                st.values_at("id", np.array(bad))


def test_decode_equals_numpy_char_decode_with_non_ascii(tmp_path):
    values = [*NON_ASCII, "", "plain", "a\u0301", "no-break\u00a0space and space "]  # tabs are refused (validate.py)
    raw = np.array([v.encode("utf-8") for v in values], dtype="S128")
    fast, reference = columns.decode(raw), np.char.decode(raw, "utf-8")
    assert fast.dtype.kind == "U" and fast.tolist() == reference.tolist() == values
    assert columns.decode(raw.reshape(3, 3)).tolist() == reference.reshape(3, 3).tolist()
    assert columns.decode(raw[:0]).shape == (0,)
    with Store.create(tmp_path / "u.h5", ModelInfo(version="v1", dim=DIM, model_id="m")) as st:
        ids = [v or "empty" for v in values]
        st.enroll(_unit(np.random.default_rng(3), len(ids)), ids, values)
        assert st.columns()["id"].tolist() == ids and st.columns()["identity"].tolist() == values
        assert st.values_at("id", np.arange(len(ids))[::-1]).tolist() == ids[::-1]
