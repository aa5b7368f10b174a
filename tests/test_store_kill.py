"""A writer SIGKILLed in the middle of a large enrol leaves a store `gallery verify` accepts,
holding exactly the batches committed before the kill; the next writer takes the lock over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from gallery.preprocess import l2_normalize
from gallery.store import ModelInfo, Store

DIM, ROWS, BATCH = 32, 120_000, 1000

CHILD = """
import sys, numpy as np
from gallery.store import Store, items
items.SEGMENT_ROWS = {batch}  # one commit per batch: the kill lands between and inside commits
path, seed = sys.argv[1], int(sys.argv[2])
x = np.random.default_rng(seed).normal(size=({rows}, {dim})).astype(np.float32)
ids = [f"s{{seed}}-{{i}}" for i in range({rows})]
with Store.open(path, "a") as store:
    store.enroll(x, ids, batch_size={batch}, progress=lambda n: print("committed", flush=True))
print("finished", flush=True)
""".format(rows=ROWS, dim=DIM, batch=BATCH)

GALLERY = [str(Path(sys.executable).with_name("gallery"))]


def _kill_after(path: Path, seed: int, batches: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(seed)],
                             stdout=subprocess.PIPE, text=True)
    seen = 0
    while seen < batches:
        line = child.stdout.readline()
        assert line, "child exited early"
        seen += line.startswith("committed")
    os.kill(child.pid, signal.SIGKILL)  # the child is busy writing the next batches
    child.wait()
    assert child.returncode == -signal.SIGKILL


def _expected(seed: int, n: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(ROWS, DIM)).astype(np.float32)[:n])


def test_sigkill_mid_enrol_keeps_whole_batches(tmp_path):
    path = tmp_path / "big.h5"
    Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m")).close()
    committed_before = 0
    for seed, batches in ((11, 4), (12, 9)):
        _kill_after(path, seed, batches)
        verify = subprocess.run([*GALLERY, "verify", str(path), "--json"], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        with Store.open(path) as store:
            n = store.committed - committed_before
            assert n % BATCH == 0 and BATCH * batches <= n < ROWS  # whole batches, not all of them
            cols = store.columns()
            assert cols["id"][committed_before:].tolist() == [f"s{seed}-{i}" for i in range(n)]
            np.testing.assert_array_equal(store.embeddings()[committed_before:], _expected(seed, n))
            committed_before = store.committed
    # The dead writer's lock is taken over, its uncommitted tail overwritten.
    with Store.open(path, "a") as store:
        store.enroll(np.ones((3, DIM), np.float32), ["after-1", "after-2", "after-3"])
        assert store.committed == committed_before + 3
        report = store.verify()
    assert report["ok"] and not report["warnings"], report


def test_readers_during_a_live_writer_see_whole_batches(tmp_path):
    path = tmp_path / "live.h5"
    Store.create(path, ModelInfo(version="v1", dim=DIM, model_id="m")).close()
    expected = _expected(21, ROWS)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "21"], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    seen = []
    try:
        while len(seen) < 15 and child.poll() is None:
            with Store.open(path) as store:  # never blocked by the writer's lock
                n = store.committed
                ids = store.columns()["id"]
                assert len(ids) == n and n % BATCH == 0
                if n:
                    assert ids[-1] == f"s21-{n - 1}"
                    np.testing.assert_array_equal(store.embeddings(np.array([n - 1]))[0], expected[n - 1])
                seen.append(n)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert seen == sorted(seen) and any(0 < n < ROWS for n in seen)  # read mid-enrol
