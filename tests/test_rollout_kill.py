"""A backfill SIGKILLed at a random point and resumed ends identical to an uninterrupted
one (rows, embeddings, versions), and readers keep searching while it runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import ok, upgraded_store
from gallery.rollout import overlay
from gallery.search import search
from gallery.store import Store, overlays

pytest.importorskip("torch")

BATCH = 4
# The child paces itself a little after each commit so the kill can land at many points of
# the run (inside an encoder call, a write, a flush or the pause), not only after the end.
CHILD = """
import sys, time, random
from gallery.rollout import BackfillConfig, backfill
random.seed(int(sys.argv[3]))  # the test's seed: the same pauses on every run
def step(n):
    print("committed", flush=True)
    time.sleep(random.random() * 0.02)
backfill(BackfillConfig(store=sys.argv[1], images=sys.argv[2], batch_size={batch}, publish_every={publish}),
         progress=step)
print("finished", flush=True)
""".format(batch=BATCH, publish=2 * BATCH)



@pytest.fixture(scope="module")
def upgraded(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kill")
    store = upgraded_store(root, "g.h5", per_class=16, eval_per_class=4, impostor_pairs=1000)
    for p in sorted((root / "images").rglob("*.png"))[::9]:  # some rows keep no image: stay v1
        p.unlink()
    return root, store


def _reader_pass(path: Path, queries: np.ndarray) -> int:
    """One reader: open, search, close. Returns how many backfilled rows it saw."""
    with Store.open(path) as st:
        result = search(st, queries, k=5, threshold=-1.0)
        assert (result.rows >= 0).all()
        assert set(result.models.ravel().tolist()) <= {"v1", "v2"}
        return int((st.columns()["model"] == "v2").sum())


def _state(path: Path) -> dict:
    with Store.open(path) as st:
        rows = overlay.committed_rows(st, "v2")  # committed = published: every commit is visible
        return {"rows": rows, "published": len(rows), "emb": st.embeddings(),
                "models": st.columns()["model"], "verify": st.verify()["ok"] and not overlays.check(st),
                "events": [e for e in st.history() if e["event"] == "backfill"]}


@pytest.mark.parametrize("seed", [1729])  # the kill point and queries; another seed, another case
def test_sigkill_at_random_point_then_resume_is_identical(upgraded, tmp_path, seed):
    root, base = upgraded
    straight, killed = tmp_path / "straight.h5", tmp_path / "killed.h5"
    shutil.copytree(base, straight)
    shutil.copytree(base, killed)
    ok("backfill", straight, "--images", root / "images", "--batch-size", BATCH, "--json")

    rng = np.random.default_rng(seed)
    planned = len(_state(straight)["rows"])
    kill_after = int(rng.integers(1, planned // BATCH - 2))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(killed), str(root / "images"), str(seed)],
                             stdout=subprocess.PIPE, text=True)
    queries = rng.normal(size=(8, 16)).astype(np.float32)
    v2_hits: list[int] = []
    stop, searched = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def readers() -> None:  # readers keep searching mid-backfill, in parallel with the writer
        try:
            while not stop.is_set():
                v2_hits.append(_reader_pass(killed, queries))
                searched.set()
        except BaseException as exc:  # noqa: BLE001  reported by the main thread
            errors.append(exc)
            searched.set()

    # Readers start once the run is planned (its plan committed).
    assert child.stdout.readline().startswith("committed"), f"child failed (seed {seed})"
    thread = threading.Thread(target=readers)
    thread.start()
    try:
        for _ in range(kill_after - 1):
            line = child.stdout.readline()
            assert line.startswith("committed"), f"child ended early (seed {seed}): {line!r}"
        searched.wait(timeout=60)  # at least one search mid-run (or a reader's error)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        stop.set()
        thread.join()
    assert child.returncode == -signal.SIGKILL
    assert not errors, f"a reader failed during the backfill (seed {seed}): {errors[0]!r}"
    assert v2_hits, "readers did not run during the backfill"
    partial = _state(killed)
    # Commits come every publish_every = 2 batches: at most one batch done but not committed.
    assert partial["verify"] and (kill_after - 1) * BATCH <= len(partial["rows"]) < planned, seed
    assert not partial["events"]  # the run never finished
    # Readers see whole commits only: every committed row, nothing more.
    visible = int((partial["models"] == "v2").sum())
    assert visible == partial["published"] == len(partial["rows"]), seed
    assert v2_hits == sorted(v2_hits) and v2_hits[-1] <= visible, seed

    resumed = ok("backfill", killed, "--images", root / "images", "--batch-size", "7", "--json")
    assert resumed["resumed"] and resumed["planned"] == planned, seed
    a, b = _state(killed), _state(straight)
    assert np.array_equal(a["rows"], b["rows"]), seed
    assert np.array_equal(a["emb"], b["emb"]), seed
    assert np.array_equal(a["models"], b["models"]) and a["verify"], seed
    no_image = [i for i in range(len(a["models"])) if a["models"][i] == "v1"]
    assert len(no_image) == len(a["models"]) - planned
    assert a["events"][-1]["resumed"] and a["events"][-1]["embedded"] == planned
