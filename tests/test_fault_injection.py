"""SIGKILL a writer at 20 random points of an enrol; the store must always survive.

A child process enrols a fixed plan of rows (several enrol calls, several committed
batches each, plus one removal) and appends each call's ids to an fsynced ack file
only after the call returns. The child counts every low-level HDF5 write it makes
(dataset writes and resizes, attribute writes, flushes) and SIGKILLs itself at write
number N, with N drawn at random over the whole plan, so kills land inside batches,
between a batch's rows and its commit attributes, inside the history append, and so
on. After each kill the parent checks, with a fresh reader:
  - the store opens and `verify` reports ok (every committed batch checksum holds);
  - every acknowledged row is present with exactly its vector (no committed row lost),
    and every acknowledged removal is still a tombstone;
  - the gallery is a prefix of the plan (nothing half-committed, nothing reordered).
Then a second, un-killed writer resumes the plan on the crash-scarred file: it must
truncate the dead writer's tail and finish with the exact planned gallery.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import ok, upgraded_store
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store

DIM = 16
PLAN = [("enroll", 0, 23), ("enroll", 23, 60), ("remove", 5, 9), ("enroll", 60, 61),
        ("enroll", 61, 110), ("remove", 40, 44), ("enroll", 110, 150)]
KILLS = 20

CHILD = r"""
import json, os, signal, sys
import h5py, numpy as np
from gallery.store import Store

store, ack, plan_json, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
DIM = 16
count = [0]

def hook(fn):
    def wrapped(*a, **kw):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **kw)
    return wrapped

# Every way the store's code reaches the file: the kill can land before any of them.
h5py.Dataset.__setitem__ = hook(h5py.Dataset.__setitem__)
h5py.Dataset.resize = hook(h5py.Dataset.resize)
h5py.AttributeManager.__setitem__ = hook(h5py.AttributeManager.__setitem__)
h5py.File.flush = hook(h5py.File.flush)

def vector(i):
    return np.random.default_rng(i).normal(size=DIM).astype(np.float32)

def log(line):
    with open(ack, "a") as fh:
        fh.write(line + "\n"); fh.flush(); os.fsync(fh.fileno())

with Store.open(store, "a") as st:
    present = set(st.columns()["id"].tolist())
    dead = set(st.columns()["id"][st.columns()["deleted"]].tolist())
    for op, lo, hi in json.loads(plan_json):
        ids = [f"item{i:04d}" for i in range(lo, hi)]
        if op == "enroll":
            todo = [i for i in range(lo, hi) if f"item{i:04d}" not in present]
            if todo:
                emb = np.stack([vector(i) for i in todo])
                st.enroll(emb, [f"item{i:04d}" for i in todo], batch_size=7)
        elif not set(ids) <= dead:
            st.remove(ids)
        log(json.dumps([op, lo, hi]))
print("writes", count[0])
"""


def _vector(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=DIM).astype(np.float32)


def _run_child(store: Path, ack: Path, kill_at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", CHILD, str(store), str(ack), json.dumps(PLAN), str(kill_at)],
                          capture_output=True, text=True, timeout=120, env=env)


def _acked(ack: Path) -> list[tuple[str, int, int]]:
    if not ack.exists():
        return []
    return [tuple(json.loads(line)) for line in ack.read_text().splitlines() if line]


def _check_store(store: Path, acked: list) -> int:
    """The invariants after a crash; returns the committed row count."""
    with Store.open(store) as st:
        report = st.verify()
        assert report["ok"], report["problems"]
        cols = st.columns()
        ids = cols["id"].tolist()
        # A prefix of the plan, in order: row r holds item r.
        assert ids == [f"item{i:04d}" for i in range(len(ids))]
        expected = l2_normalize(np.stack([_vector(i) for i in range(len(ids))])) if ids else np.empty((0, DIM))
        np.testing.assert_allclose(st.embeddings(), expected, atol=1e-6)
        for op, lo, hi in acked:
            if op == "enroll":
                assert len(ids) >= hi, f"acknowledged rows {lo}..{hi} lost (store has {len(ids)})"
            else:
                assert cols["deleted"][lo:hi].all(), f"acknowledged removal {lo}..{hi} lost"
        st.history()  # the event log stays readable
        return len(ids)


def test_enrol_survives_sigkill_at_20_random_points(tmp_path: Path):
    # A clean run counts the low-level writes the whole plan makes.
    clean = _run_child(_new_store(tmp_path / "count.h5"), tmp_path / "count.ack", kill_at=0)
    assert clean.returncode == 0, clean.stderr
    total = int(clean.stdout.split()[-1])
    assert total > 100  # many write points to choose from
    assert _check_store(tmp_path / "count.h5", _acked(tmp_path / "count.ack")) == PLAN[-1][2]

    points = np.random.default_rng(7).choice(np.arange(1, total + 1), KILLS, replace=False)
    for round_, kill_at in enumerate(sorted(points.tolist())):
        store, ack = _new_store(tmp_path / f"r{round_}.h5"), tmp_path / f"r{round_}.ack"
        proc = _run_child(store, ack, int(kill_at))
        assert proc.returncode == -signal.SIGKILL, f"write {kill_at}/{total}: {proc.stderr[-500:]}"
        rows = _check_store(store, _acked(ack))
        # The next writer truncates the dead one's tail and completes the plan.
        resumed = _run_child(store, ack, kill_at=0)
        assert resumed.returncode == 0, resumed.stderr
        assert _check_store(store, _acked(ack)) == PLAN[-1][2] >= rows
        with Store.open(store) as st:
            assert int(st.columns()["deleted"].sum()) == 8
            assert st.verify()["warnings"] == []  # the dead writer's leftover tail is gone
        store.unlink()


def _new_store(path: Path) -> Path:
    Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="synthetic")).close()
    return path


# ---- backfill (gallery.rollout): the same 20 random kill points -------------------------
BACKFILL_CHILD = CHILD.split("def vector")[0] + r"""
from gallery.rollout import BackfillConfig, backfill
backfill(BackfillConfig(store=store, images=sys.argv[2], batch_size=4))
print("writes", count[0])
"""


def _backfill_state(path: Path) -> dict:
    from gallery.rollout import overlay

    with Store.open(path) as st:
        report = st.verify()
        g = overlay.group(st, "v2")
        rows = g["row"][: overlay.state(g)[0]] if g is not None else np.empty(0, np.int64)
        # readers see only the published prefix of the committed rows (backfill --publish-every)
        shown = rows[: overlay.published(g)] if g is not None else rows
        return {"ok": report["ok"], "problems": report["problems"], "rows": rows, "shown": shown,
                "emb": st.embeddings(), "models": st.columns()["model"]}


def test_backfill_survives_sigkill_at_20_random_points(tmp_path: Path):
    pytest.importorskip("torch")
    base = upgraded_store(tmp_path, "base.h5", per_class=5, eval_per_class=3, impostor_pairs=200)

    def run(path: Path, kill_at: int) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        return subprocess.run([sys.executable, "-c", BACKFILL_CHILD, str(path), str(tmp_path / "images"), "[]",
                               str(kill_at)], capture_output=True, text=True, timeout=120, env=env)

    straight = tmp_path / "straight.h5"
    shutil.copy(base, straight)
    clean = run(straight, 0)
    assert clean.returncode == 0, clean.stderr
    total = int(clean.stdout.split()[-1])
    want = _backfill_state(straight)
    assert want["ok"] and len(want["rows"]) == 50 and (want["models"] == "v2").all()

    points = np.random.default_rng(11).choice(np.arange(1, total + 1), min(KILLS, total), replace=False)
    for kill_at in sorted(points.tolist()):
        store = tmp_path / "killed.h5"
        shutil.copy(base, store)
        proc = run(store, int(kill_at))
        assert proc.returncode == -signal.SIGKILL, f"write {kill_at}/{total}: {proc.stderr[-500:]}"
        got = _backfill_state(store)
        assert got["ok"], (kill_at, got["problems"])
        n = len(got["rows"])  # committed re-embeddings: a prefix of the uninterrupted run, exact
        assert np.array_equal(got["rows"], want["rows"][:n])
        np.testing.assert_array_equal(got["emb"][got["shown"]], want["emb"][got["shown"]])
        untouched = np.setdiff1d(np.arange(len(got["models"])), got["shown"])
        assert (got["models"][untouched] == "v1").all() and (got["models"][got["shown"]] == "v2").all()
        ok("backfill", store, "--images", tmp_path / "images", "--batch-size", "7", "--json")  # resume
        done = _backfill_state(store)
        assert done["ok"] and np.array_equal(done["rows"], want["rows"])
        np.testing.assert_array_equal(done["emb"], want["emb"])
        assert np.array_equal(done["models"], want["models"])
        store.unlink()
