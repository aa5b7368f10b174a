"""A sync SIGKILLed at several points (and the store changed between the kills) resumes and
converges: the engine then holds exactly the store's live view, and one more sync sends
nothing. The child reports each committed engine batch; the kill lands after the N-th,
somewhere in the next batch's reads, engine write, cursor write or the pause."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from engine_helpers import KINDS, assert_serves_live_view, backfill, engine_uri, unit, upgrade, v1_store
from gallery import engines
from gallery.store import Store

CHILD = """
import random, sys, time
from gallery import engines
from gallery.store import Store
def step(event):
    print("committed", flush=True)
    time.sleep(random.random() * 0.05)
with Store.open(sys.argv[2], "a") as st, engines.connect(sys.argv[1], sys.argv[3]) as eng:
    engines.sync(st, eng, collection="g", batch=int(sys.argv[4]), index="FLAT", progress=step)
print("finished", flush=True)
"""


def _sync_killed_after(kind: str, store, uri: str, batch: int, batches: int) -> bool:
    """Run a sync in a child and SIGKILL it after `batches` committed batches; True if it finished first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(store), uri, str(batch)],
                             stdout=subprocess.PIPE, text=True, env=env)
    seen = 0
    for line in child.stdout:
        if line.startswith("finished"):
            break
        seen += 1
        if seen == batches:
            child.send_signal(signal.SIGKILL)
            break
    child.stdout.close()
    child.wait(timeout=120)
    return child.returncode == 0


@pytest.mark.parametrize("kind", KINDS)
def test_sigkilled_sync_resumes_and_converges(kind, tmp_path):
    rng = np.random.default_rng(int.from_bytes(os.urandom(2), "little"))
    path = v1_store(tmp_path / "g.h5", rows=400)
    uri = engine_uri(kind, tmp_path)
    batch = 40
    # First build (10 batches), killed early and late; then the store changes under the
    # half-synced view (enrol, removals, upgrade with new rows and a backfill) and the
    # v2 view's build is killed too.
    assert not _sync_killed_after(kind, path, uri, batch, int(rng.integers(1, 4)))
    assert not _sync_killed_after(kind, path, uri, batch, int(rng.integers(2, 6)))
    with Store.open(path, "a") as st:
        st.enroll(unit(60, 21), [f"b{i}" for i in range(60)], [f"q{i}" for i in range(60)])
        st.remove([f"a{i}" for i in range(0, 400, 37)] + ["b5"])
    assert not _sync_killed_after(kind, path, uri, batch, int(rng.integers(1, 5)))
    assert _sync_killed_after(kind, path, uri, batch, 10_000)  # runs to the end: v1 view complete
    with Store.open(path, "a") as st:
        with engines.connect(kind, uri) as eng:
            assert_serves_live_view(eng, "g__v1", st)
        upgrade(st)
        st.enroll(unit(50, 22), [f"n{i}" for i in range(50)], [f"p{i}" for i in range(50)], model_version="v2")
        backfill(st, np.arange(100, 180), seed=23)
        st.remove(["a101", "n3"])
    assert not _sync_killed_after(kind, path, uri, batch, int(rng.integers(2, 8)))
    with Store.open(path, "a") as st, engines.connect(kind, uri) as eng:
        assert eng.alias_target("g") == "g__v1"  # the half-built v2 view is not served
        done = engines.sync(st, eng, collection="g", batch=batch, index="FLAT")
        assert done["collection"] == "g__v2" and eng.alias_target("g") == "g__v2"
        assert_serves_live_view(eng, "g__v2", st)
        again = engines.sync(st, eng, collection="g", batch=batch, index="FLAT")
        assert (again["upserted"], again["deleted"], again["batches"]) == (0, 0, 0)
