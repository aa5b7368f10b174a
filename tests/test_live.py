"""Long-lived readers follow the store (issue 16, item 6): a reader process holding one
`gallery.open(path)` (live by default) searches while a writer process rolls the store back and
upgrades it again; the reader answers with each new query model (and its thresholds) without
being reopened, and every answer equals a fresh reader's. A Gallery opened with
`live=False` keeps its snapshot until `refresh()`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import upgraded_store

pytest.importorskip("torch")

ROOT = str(Path(__file__).resolve().parents[1])

READER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import gallery

path, sync = sys.argv[1], Path(sys.argv[2])
queries = np.load(sync / "q.npy")
live = gallery.open(path)  # the default follows the store
seen, checks = [], []
(sync / "ready").touch()
for want in ("v1", "v2"):  # the writer rolls back to v1, then upgrades to v2 again
    deadline = time.time() + 300
    while True:
        result = live.search(queries, k=3)
        seen.append(result.query_model)
        if result.query_model == want:
            with gallery.open(path) as fresh:  # what a new reader sees now
                ref = fresh.search(queries, k=3)
            checks.append({"model": want, "rows": result.rows.tolist() == ref.rows.tolist(),
                           "thresholds": np.array_equal(result.thresholds, ref.thresholds, equal_nan=True),
                           "match": result.match() == ref.match()})
            break
        if time.time() > deadline:
            print(json.dumps({"timeout": want, "seen": seen[-3:]}))
            sys.exit(1)
        time.sleep(0.02)
    (sync / f"saw-{want}").touch()
print(json.dumps({"checks": checks, "reloads": live.reloads, "searches": len(seen)}))
"""

WRITER = r"""
import sys, time
from pathlib import Path
from gallery.rollout import rollback, upgrade

path, sync, model, report = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]

def wait(name):
    deadline = time.time() + 300
    while not (sync / name).exists():
        if time.time() > deadline:
            sys.exit(f"no {name}")
        time.sleep(0.02)

wait("ready")
rollback(path)
wait("saw-v1")
upgrade(path, model, report)
wait("saw-v2")
"""


def test_a_reader_process_follows_rollback_and_upgrade_of_a_writer_process(tmp_path):
    store = upgraded_store(tmp_path, "g.h5", per_class=3, eval_per_class=3, impostor_pairs=200)
    sync = tmp_path / "sync"
    sync.mkdir()
    np.save(sync / "q.npy", np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": ROOT}
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store), str(sync)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    writer = subprocess.run([sys.executable, "-c", WRITER, str(store), str(sync), str(tmp_path / "v2.onnx"),
                             str(tmp_path / "report.json")], capture_output=True, text=True, env=env, timeout=600)
    out, err = reader.communicate(timeout=600)
    assert writer.returncode == 0, writer.stderr
    assert reader.returncode == 0, out + err
    result = json.loads(out)
    assert [c["model"] for c in result["checks"]] == ["v1", "v2"]
    assert all(c["rows"] and c["thresholds"] and c["match"] for c in result["checks"]), result
    assert result["reloads"] >= 2  # one new generation per switch, the same handle object throughout


def test_a_default_gallery_follows_and_a_snapshot_one_waits_for_refresh(tmp_path):
    """The other half of the promise, in one process: a second Gallery's commit is seen by a
    default (live) Gallery at its next read, by a live=False one only after refresh()."""
    import gallery

    rng = np.random.default_rng(3)
    writer = gallery.create(tmp_path / "g.h5", dim=8, model_id="random")
    writer.enroll(rng.normal(size=(4, 8)).astype(np.float32), ["a", "b", "c", "d"])
    live, plain = gallery.open(tmp_path / "g.h5"), gallery.open(tmp_path / "g.h5", live=False)
    assert live.info()["live"] == plain.info()["live"] == 4 and live.reloads == 0
    before = live.generation
    writer.remove(["a"])
    writer.set_threshold("v1", "v1", 0.5)  # two commits between two reads
    assert live.info()["live"] == 3 and live.thresholds()["pairs"][0]["threshold"] == 0.5
    assert live.reloads == 1 and live.generation != before
    assert plain.info()["live"] == 4 and plain.thresholds()["pairs"][0]["threshold"] is None
    plain.refresh()
    assert plain.info()["live"] == 3 and plain.generation == live.generation
