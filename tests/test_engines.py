"""gallery.engines against the real clients (milvus-lite, Qdrant local mode): a sync holds
the store's live view, sends only what changed, switches the serving alias only to a
complete view (upgrade and rollback), and engine search decides like local search."""

from __future__ import annotations

import numpy as np
import pytest

from engine_helpers import KINDS, assert_serves_live_view, backfill, engine_uri, unit, upgrade, v1_store
from gallery import engines
from gallery.store import Store
from gallery.search import search

SYNC = dict(collection="g", batch=40, index="FLAT")  # FLAT: Milvus searches exactly, like the reference


def _decisions(result):
    return result.rows.tolist(), result.rejected.tolist(), result.match()


@pytest.mark.parametrize("kind", KINDS)
def test_sync_is_the_live_view_and_sends_only_changes(kind, tmp_path):
    path = v1_store(tmp_path / "g.h5")
    with Store.open(path, "a") as st, engines.connect(kind, engine_uri(kind, tmp_path)) as eng:
        first = engines.sync(st, eng, **SYNC)
        assert (first["collection"], first["switched"], first["upserted"]) == ("g__v1", True, 120)
        assert_serves_live_view(eng, "g__v1", st)
        assert eng.alias_target("g") == "g__v1"

        again = engines.sync(st, eng, **SYNC)
        assert (again["upserted"], again["deleted"], again["batches"], again["switched"]) == (0, 0, 0, False)

        st.enroll(unit(30, 7), [f"b{i}" for i in range(30)], [f"q{i}" for i in range(30)])
        st.remove(["a3", "a50", "b2"])  # two synced rows and one never sent
        st.set_threshold("v1", "v1", 0.42)
        changed = engines.sync(st, eng, **SYNC)
        assert (changed["upserted"], changed["deleted"]) == (29, 2)
        assert_serves_live_view(eng, "g__v1", st)
        record = eng.meta("g__v1")
        assert record["thresholds"] == {"v1": pytest.approx(0.42)} and record["rows"] == 147

        st.set_threshold("v1", "v1", 0.5)  # a threshold alone: the view record only
        only_meta = engines.sync(st, eng, **SYNC)
        assert (only_meta["upserted"], only_meta["deleted"]) == (0, 0)
        assert eng.meta("g__v1")["thresholds"] == {"v1": 0.5}


@pytest.mark.parametrize("kind", KINDS)
def test_upgrade_and_rollback_switch_the_alias_between_complete_views(kind, tmp_path):
    path = v1_store(tmp_path / "g.h5", rows=150)
    queries = unit(12, 99)
    with Store.open(path, "a") as st, engines.connect(kind, engine_uri(kind, tmp_path)) as eng:
        engines.sync(st, eng, **SYNC)
        v1_view = _decisions(engines.search(eng, "g", queries, k=5))
        assert v1_view == _decisions(search(st, queries, k=5, kind="flat"))

        upgrade(st)
        seen = []

        def reader(_event: dict) -> None:  # after every engine batch of the new view's build
            seen.append(_decisions(engines.search(eng, "g", queries, k=5)))

        up = engines.sync(st, eng, progress=reader, **SYNC)
        assert (up["collection"], up["previous"], up["switched"]) == ("g__v2", "g__v1", True)
        assert len(seen) == 4 and all(s == v1_view for s in seen)  # readers saw the whole v1 view throughout
        assert_serves_live_view(eng, "g__v2", st)
        after = engines.search(eng, "g", queries, k=5)
        assert after.query_model == "v2" and _decisions(after) == _decisions(search(st, queries, k=5, kind="flat"))

        st.enroll(unit(20, 5), [f"n{i}" for i in range(20)], [f"p{i % 12}" for i in range(20)], model_version="v2")
        backfill(st, np.arange(10, 20), seed=3)
        st.remove(["a12"])
        moved = engines.sync(st, eng, **SYNC)
        assert (moved["upserted"], moved["deleted"], moved["switched"]) == (20 + 9, 1, False)
        assert_serves_live_view(eng, "g__v2", st)  # backfilled rows: v2 vectors, model v2
        v2_view = _decisions(engines.search(eng, "g", queries, k=5))
        assert v2_view == _decisions(search(st, queries, k=5, kind="flat"))

        st.set_active_model("v1")  # what `gallery rollback` does
        seen.clear()
        back = engines.sync(st, eng, progress=reader, **SYNC)
        assert back["switched"] and back["previous"] == "g__v2" and seen and all(s == v2_view for s in seen)
        # Milvus catches the old view up; Qdrant's lacks a vector name for v2 rows: a new generation.
        assert back["collection"] == ("g__v1" if kind == "milvus" else "g__v1__g2")
        assert_serves_live_view(eng, back["collection"], st)  # v2 rows as v2, backfilled rows as v1 again
        rolled = engines.search(eng, "g", queries, k=5)
        assert rolled.query_model == "v1" and _decisions(rolled) == _decisions(search(st, queries, k=5, kind="flat"))
        assert eng.exists("g__v2") and (kind == "milvus" or not eng.exists("g__v1"))


@pytest.mark.parametrize("kind", KINDS)
def test_engine_search_matches_local_flat_search_on_200_queries(kind, tmp_path):
    path = v1_store(tmp_path / "g.h5", rows=400, seed=11)
    with Store.open(path, "a") as st, engines.connect(kind, engine_uri(kind, tmp_path)) as eng:
        upgrade(st)
        st.set_threshold("v2", "v1", 0.72)  # random 16-d queries score ~0.75 at best: about half rejected
        st.set_threshold("v2", "v2", 0.78)
        st.enroll(unit(100, 12), [f"n{i}" for i in range(100)], [f"p{i % 12}" for i in range(100)],
                  model_version="v2")
        backfill(st, np.arange(0, 400, 7), seed=13)
        st.remove([f"a{i}" for i in range(0, 400, 50)])
        engines.sync(st, eng, collection="g", batch=200, index="FLAT")
        # Queries near gallery rows (accepted) and random ones (mostly rejected).
        near = st.embeddings(np.arange(1, 500, 5)) + 0.3 * unit(100, 14)
        queries = np.vstack([near, unit(100, 15)])
        ours = engines.search(eng, "g", queries, k=10)
        ref = search(st, queries, k=10, kind="flat")
    assert ours.rows.tolist() == ref.rows.tolist()
    assert ours.ids.tolist() == ref.ids.tolist() and ours.models.tolist() == ref.models.tolist()
    np.testing.assert_allclose(ours.scores, ref.scores, atol=1e-5)
    np.testing.assert_array_equal(ours.thresholds, ref.thresholds)
    assert ours.rejected.tolist() == ref.rejected.tolist() and ours.match() == ref.match()
    assert 20 < int(ref.rejected.sum()) < 180  # both kinds of decision are exercised
    fixed = engines.search(eng_reopen := engines.connect(kind, engine_uri(kind, tmp_path)), "g", queries, k=3,
                           threshold=0.5)
    eng_reopen.close()
    with Store.open(path) as st:
        assert _decisions(fixed) == _decisions(search(st, queries, k=3, threshold=0.5, kind="flat"))
