"""4 reader processes searching through 20 upgrade/rollback cycles: 0 failures.

The store has v1 rows, a v2 model whose backfill overlay re-embedded half of them, and a
lineage v1 -> v2; a writer process switches the query model v1 -> v2 -> v1 ... (each switch
one manifest commit, through the rollout's own `rollback` and the upgrade's commit of
lineage + switch). Every search a reader makes must be exactly the brute-force answer of
one of the two views (all of v1's vectors, or v2's with the backfilled rows substituted):
never an error, never a mix of two commits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gallery.preprocess import l2_normalize
from gallery.rollout import overlay, state
from gallery.store import ModelInfo, Store

DIM, ROWS, READERS, CYCLES = 16, 200, 4, 20
ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, traceback
import numpy as np
from gallery.rollout import rollback, state
from gallery.store import Store
from gallery.search import search

role, store, flag, out = sys.argv[1:5]

def writer(cycles):
    for _ in range(cycles):
        with Store.open(store, "a") as st:  # the upgrade's commit: lineage + switch + record
            with st.transaction():
                state.set_parent(st, "v2", "v1")
                st.set_active_model("v2")
                state.record(st, "upgrade", **{"from": "v1", "to": "v2"})
        time.sleep(0.01)
        rollback(store)
        time.sleep(0.01)
    open(flag, "w").close()

def reader(queries, views):
    import os
    seen, failures = {"v1": 0, "v2": 0}, []
    while not os.path.exists(flag) or sum(seen.values()) < 3:
        try:
            with Store.open(store) as st:
                got = search(st, queries, k=5, threshold=-1.0).rows.tolist()
            match = [name for name, rows in views.items() if rows == got]
            if not match:
                failures.append("a search matched neither view")
            else:
                seen[match[0]] += 1
        except Exception:
            failures.append(traceback.format_exc()[-500:])
    json.dump({"seen": seen, "failures": failures}, open(out, "w"))

if role == "writer":
    writer(int(sys.argv[5]))
else:
    data = json.load(open(sys.argv[5]))
    reader(np.array(data["queries"], np.float32), data["views"])
"""


def _unit(n: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, DIM))).astype(np.float32)


def test_readers_through_upgrade_rollback_cycles(tmp_path):
    path = tmp_path / "g.h5"
    v1 = _unit(ROWS, 0)
    backfilled = np.arange(0, ROWS, 2)
    v2 = v1.copy()
    v2[backfilled] = _unit(len(backfilled), 1)
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m1")) as st:
        st.enroll(v1, [f"r{i}" for i in range(ROWS)])
        st.add_model(ModelInfo(version="v2", dim=DIM, model_id="m2"))
        with st.transaction():
            state.set_parent(st, "v2", "v1")
            st.set_active_model("v2")
        overlay.start_plan(st, "v2", backfilled, {})
        overlay.commit_batch(st, "v2", backfilled, v2[backfilled], ["0" * 64] * len(backfilled),
                             cursor=len(backfilled))
        overlay.finish_plan(st, "v2")
        np.testing.assert_allclose(st.embeddings(), v2, atol=1e-6)
    queries = _unit(6, 2)
    # The two answers a consistent reader can give: exact inner-product top 5 of each view.
    views = {name: np.argsort(-(queries @ emb.T), axis=1, kind="stable")[:, :5].tolist()
             for name, emb in (("v1", v1), ("v2", v2))}
    assert views["v1"] != views["v2"]
    (tmp_path / "data.json").write_text(json.dumps({"queries": queries.tolist(), "views": views}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    flag = tmp_path / "done"
    readers = [subprocess.Popen([sys.executable, "-c", CHILD, "reader", str(path), str(flag),
                                 str(tmp_path / f"r{i}.json"), str(tmp_path / "data.json")], env=env)
               for i in range(READERS)]
    writer = subprocess.run([sys.executable, "-c", CHILD, "writer", str(path), str(flag), "-", str(CYCLES)],
                            env=env, capture_output=True, text=True, timeout=600)
    for proc in readers:
        proc.wait(timeout=600)
    assert writer.returncode == 0, writer.stderr
    results = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(READERS)]
    failures = [f for r in results for f in r["failures"]]
    assert failures == [], failures[:3]
    assert all(sum(r["seen"].values()) >= 3 for r in results)
    assert sum(r["seen"]["v1"] for r in results) and sum(r["seen"]["v2"] for r in results)  # both views seen
    with Store.open(path) as st:
        events = [e["event"] for e in st.history()]
        assert events.count("upgrade") == CYCLES and events.count("rollback") == CYCLES
        assert st.active_model == "v1" and st.verify()["ok"]
