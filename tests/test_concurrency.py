"""One writer enrolling and removing while 4 reader processes search continuously.

Readers never take the lock and never fail, and every state they see is a consistent
one: a prefix of the writer's plan with exactly the planned vectors, committed counts
that never go backwards, a passing integrity check, tombstones never returned, and a
search that finds each live row as its own best hit. A second writer is refused with
StoreLocked while the first holds the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gallery.errors import StoreLocked
from gallery.search import search
from gallery.store import ModelInfo, Store

DIM = 16
READERS = 4
CALLS = 30      # writer enrol calls of ROWS rows each
ROWS = 10

CHILD = r"""
import json, sys, time, traceback
import numpy as np
from gallery.store import Store
from gallery.search import search

role, store, flag, out, seed = sys.argv[1:6]
DIM, CALLS, ROWS = 16, 30, 10

def vector(i):
    return np.random.default_rng(i).normal(size=DIM).astype(np.float32)

def unit(i):
    v = vector(i)
    return v / np.linalg.norm(v)

def writer():
    with Store.open(store, "a") as st:
        start = st.committed
        for call in range(CALLS):
            lo = start + call * ROWS
            ids = [f"item{i:05d}" for i in range(lo, lo + ROWS)]
            st.enroll(np.stack([vector(i) for i in range(lo, lo + ROWS)]), ids, batch_size=4)
            if call % 5 == 4:
                st.remove([f"item{lo:05d}"])  # tombstone the first row of every 5th call
            time.sleep(0.02)
    open(flag, "w").close()

def check_once(rng, last):
    with Store.open(store) as st:
        n = st.committed
        assert n >= last, f"committed count went back from {last} to {n}"
        cols = st.columns()
        assert cols["id"].tolist() == [f"item{i:05d}" for i in range(n)], "ids are not the planned prefix"
        emb = st.embeddings()
        expected = np.stack([unit(i) for i in range(n)])
        assert np.abs(emb - expected).max() < 1e-6, "a row's vector is not the one enrolled"
        report = st.verify()
        assert report["ok"], report["problems"]
        live = np.flatnonzero(~cols["deleted"])
        probe = rng.choice(live, min(8, live.size), replace=False)
        res = search(st, expected[probe], k=5, kind="flat")
        assert (res.rows[:, 0] == probe).all(), "a live row is not its own best hit"
        hit = res.rows[res.rows >= 0]
        assert not cols["deleted"][hit].any(), "a tombstoned row was returned"
        return n

def reader():
    rng = np.random.default_rng(int(seed))
    seen, errors, last = [], [], 0
    done = False
    while not done:
        done = __import__("os").path.exists(flag)  # one last pass after the writer finished
        try:
            last = check_once(rng, last)
            seen.append(last)
        except Exception:
            errors.append(traceback.format_exc(limit=3))
        if len(seen) + len(errors) == 1:
            print("ready", flush=True)  # the parent starts the writer once every reader got here
    json.dump({"reads": len(seen), "counts": sorted(set(seen)), "errors": errors}, open(out, "w"))

writer() if role == "writer" else reader()
"""


def _spawn(role: str, store: Path, flag: Path, out: Path, seed: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, "-c", CHILD, role, str(store), str(flag), str(out), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _seed_store(path: Path, rows: int) -> None:
    with Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="synthetic")) as st:
        vecs = np.stack([np.random.default_rng(i).normal(size=DIM).astype(np.float32) for i in range(rows)])
        st.enroll(vecs, [f"item{i:05d}" for i in range(rows)])


def test_one_writer_four_readers(tmp_path: Path):
    store, flag = tmp_path / "g.h5", tmp_path / "writer.done"
    _seed_store(store, 20)
    readers = [_spawn("reader", store, flag, tmp_path / f"r{i}.json", seed=i) for i in range(READERS)]
    for proc in readers:  # each has finished one full check before the writer starts
        line = proc.stdout.readline()
        assert line == "ready\n", line + proc.stderr.read()
    writer = _spawn("writer", store, flag, tmp_path / "w.json")
    _, werr = writer.communicate(timeout=300)
    assert writer.returncode == 0, werr
    for proc in readers:
        _, rerr = proc.communicate(timeout=300)
        assert proc.returncode == 0, rerr
    final = 20 + CALLS * ROWS
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(READERS)]
    for rep in reports:
        assert rep["errors"] == [], rep["errors"][0]
        assert rep["reads"] >= 2 and rep["counts"][-1] == final
    # The readers really ran during the writes: together they saw intermediate states.
    assert len(set().union(*(r["counts"] for r in reports))) >= 3


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path):
    store = tmp_path / "g.h5"
    _seed_store(store, 3)
    with Store.open(store, "a"):
        with pytest.raises(StoreLocked, match="locked by another writer"):
            Store.open(store, "a")
        with Store.open(store) as reader:  # readers are not blocked
            assert reader.committed == 3
    with Store.open(store, "a") as again:  # released on close
        assert again.writable


def test_long_lived_reader_is_a_snapshot(tmp_path: Path):
    """A reader that stays open while a writer commits keeps answering from the state it
    opened (HDF5 caches metadata; SWMR is not used); reopening sees the new rows."""
    store = tmp_path / "g.h5"
    _seed_store(store, 20)
    reader = Store.open(store)
    try:
        before = search(reader, np.stack([np.random.default_rng(i).normal(size=DIM) for i in range(3)]), k=2)
        code = ("import numpy as np\nfrom gallery.store import Store\n"
                f"with Store.open({str(store)!r}, 'a') as st:\n"
                "    for c in range(3):\n"
                "        x = np.random.default_rng(c + 100).normal(size=(4000, 16)).astype('float32')\n"
                "        st.enroll(x, [f'w{c}_{i}' for i in range(4000)], batch_size=1000)\n")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
        reader.invalidate()
        assert reader.committed == 20 and len(reader.columns()["id"]) == 20
        after = search(reader, np.stack([np.random.default_rng(i).normal(size=DIM) for i in range(3)]), k=2)
        assert after.ids.tolist() == before.ids.tolist() == [[f"item{i:05d}", after.ids[i, 1]] for i in range(3)]
    finally:
        reader.close()
    with Store.open(store) as fresh:
        assert fresh.committed == 20 + 12_000 and fresh.verify()["ok"]
