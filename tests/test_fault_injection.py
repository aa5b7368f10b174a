"""SIGKILL a writer at 20 random system calls of an enrol plan and of a backfill; the store
must always survive.

A child process enrols a fixed plan of rows (several enrol calls, committed in segments of
7 rows, plus removals) and appends each call's ids to an fsynced ack file only after the
call returns. The syscall shim (tests/faultshim.c, via syscall_faults.py) counts every
write, pwrite, fsync, rename and unlink the child makes in the store's folder (HDF5's own
included) and SIGKILLs it before call number N, with N drawn at random over the whole
plan, so kills land inside a segment's bytes, between its fsync and rename, between the
manifest's write and its rename, before the directory fsync, and so on. After each kill
the parent checks, with a fresh reader:
  - the store opens and `verify` reports ok (every committed batch checksum holds);
  - every acknowledged row is present with exactly its vector (no committed row lost),
    and every acknowledged removal is still a tombstone;
  - the gallery is a prefix of the plan (nothing half-committed, nothing reordered).
Then a second, un-killed writer resumes the plan on the crash-scarred store: it removes the
dead writer's orphan files and finishes with the exact planned gallery.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import syscall_faults

from cli_helpers import ok, upgraded_store
from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store

DIM = 16
PLAN = [("enroll", 0, 23), ("enroll", 23, 60), ("remove", 5, 9), ("enroll", 60, 61),
        ("enroll", 61, 110), ("remove", 40, 44), ("enroll", 110, 150)]
KILLS = 20
needs_shim = pytest.mark.skipif(syscall_faults.shim() is None, reason="no C compiler for tests/faultshim.c")

CHILD = r"""
import json, os, sys
import numpy as np
from gallery.store import Store, items

store, ack, plan_json = sys.argv[1], sys.argv[2], sys.argv[3]
DIM = 16
items.SEGMENT_ROWS = 7  # several commits per enrol call

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
"""


def _vector(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=DIM).astype(np.float32)


def _run_child(store: Path, ack: Path, kill_at: int | None):
    """The plan child under the shim (kill_at None: a counting run, returns (outcome, calls))."""
    argv = [sys.executable, "-c", CHILD, str(store), str(ack), json.dumps(PLAN)]
    if kill_at is None:
        return syscall_faults.count(argv, store)
    return syscall_faults.run(argv, store, at=kill_at or None)


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


@needs_shim
def test_enrol_survives_sigkill_at_20_random_points(tmp_path: Path):
    # A clean run counts the system calls the whole plan makes.
    clean, calls = _run_child(_new_store(tmp_path / "count.h5"), tmp_path / "count.ack", kill_at=None)
    assert clean.returncode == 0, clean.stderr
    total = len(calls)
    assert total > 100  # many kill points to choose from
    assert _check_store(tmp_path / "count.h5", _acked(tmp_path / "count.ack")) == PLAN[-1][2]

    points = np.random.default_rng(7).choice(np.arange(1, total + 1), KILLS, replace=False)
    for round_, kill_at in enumerate(sorted(points.tolist())):
        store, ack = _new_store(tmp_path / f"r{round_}.h5"), tmp_path / f"r{round_}.ack"
        proc = _run_child(store, ack, int(kill_at))
        assert proc.killed, f"call {kill_at}/{total}: {proc.stderr[-500:]}"
        rows = _check_store(store, _acked(ack))
        # The next writer removes the dead one's orphan files and completes the plan.
        resumed = _run_child(store, ack, kill_at=0)
        assert resumed.returncode == 0, resumed.stderr
        assert _check_store(store, _acked(ack)) == PLAN[-1][2] >= rows
        with Store.open(store) as st:
            assert int(st.columns()["deleted"].sum()) == 8
            assert st.verify()["warnings"] == []
        assert not [p for p in store.iterdir() if p.name.endswith(".tmp")]  # orphans removed
        shutil.rmtree(store)


def _new_store(path: Path) -> Path:
    Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="synthetic")).close()
    return path


# ---- backfill (gallery.rollout): the same 20 random kill points -------------------------
BACKFILL_CHILD = r"""
import sys
from gallery.rollout import BackfillConfig, backfill
backfill(BackfillConfig(store=sys.argv[1], images=sys.argv[2], batch_size=4, publish_every=8))
"""


def _backfill_state(path: Path) -> dict:
    from gallery.rollout import overlay

    with Store.open(path) as st:
        report = st.verify()
        rows = overlay.committed_rows(st, "v2")  # every committed row is what readers see
        return {"ok": report["ok"], "problems": report["problems"], "rows": rows, "shown": rows,
                "emb": st.embeddings(), "models": st.columns()["model"]}


@needs_shim
def test_backfill_survives_sigkill_at_20_random_points(tmp_path: Path):
    pytest.importorskip("torch")
    base = upgraded_store(tmp_path, "base.h5", per_class=5, eval_per_class=3, impostor_pairs=200)

    def argv(path: Path) -> list[str]:
        return [sys.executable, "-c", BACKFILL_CHILD, str(path), str(tmp_path / "images")]

    straight = tmp_path / "straight.h5"
    shutil.copytree(base, straight)
    clean, calls = syscall_faults.count(argv(straight), straight)
    assert clean.returncode == 0, clean.stderr
    total = len(calls)
    want = _backfill_state(straight)
    assert want["ok"] and len(want["rows"]) == 50 and (want["models"] == "v2").all()

    points = np.random.default_rng(11).choice(np.arange(1, total + 1), min(KILLS, total), replace=False)
    for kill_at in sorted(points.tolist()):
        store = tmp_path / "killed.h5"
        shutil.copytree(base, store)
        proc = syscall_faults.run(argv(store), store, at=int(kill_at))
        assert proc.killed, f"call {kill_at}/{total}: {proc.stderr[-500:]}"
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
        shutil.rmtree(store)
