"""The demo shows success (issue 16, items 2 and 8): examples/demo.sh, as `bash setup.sh` runs
it, trains v1, enrols and calibrates the store, trains v2 with MixBCT, passes the compatibility
gate and runs examples/rollout.sh at its defaults to the end (check-compat with the criterion
gate, stage, shadow within the 5% flip limit, switch, backfill, verify); after the upgrade most
demo queries are accepted and correct, more than v1 got right before it.

The outcomes are read from the demo's own side-by-side report (decisions.json, written by its
`gallery shadow --out`) and recounted here from the per-query decisions and the labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gallery.store import Store

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
GALLERY = str(Path(sys.executable).with_name("gallery"))
TUNABLES = ("GATES", "MAX_FLIP_RATE", "WORK", "TARGET_FAR")  # rollout.sh runs at its defaults


def _outcome(entry: dict, side: str) -> str:
    decision = entry[side]
    return "rejected" if decision is None else "correct" if decision == entry["label"] else "wrong"


def test_the_demo_ends_with_most_queries_accepted_and_correct(tmp_path):
    d = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in TUNABLES}
    run = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], capture_output=True, text=True,
                         env={**env, "GALLERY": GALLERY, "DEMO_DIR": str(d)}, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "check-compat exit code: 0" in run.stdout
    assert "rollout: done" in run.stderr and "5/6 backfill from" in run.stderr, run.stderr[-3000:]
    with Store.open(d / "store.h5") as st:
        assert st.active_model == "v2" and set(st.columns()["model"]) == {"v2"}  # every row backfilled
        assert st.verify()["ok"]
    shadow = json.loads((d / "rollout" / "shadow.json").read_text())  # the cut-over evidence
    assert shadow["decisions"]["regressed"] <= 0.05 * shadow["queries"]

    report = json.loads((d / "decisions.json").read_text())
    per_query = report["per_query"]
    n = len(per_query)
    queries = sorted(p for p in (d / "queries").rglob("*.png"))
    assert n == report["queries"] == len(queries) >= 100
    assert all(e["label"] == Path(e["query"]).parent.name for e in per_query)  # ROOT/<identity>/<image>
    v1 = Counter(_outcome(e, "old") for e in per_query)
    v2 = Counter(_outcome(e, "new") for e in per_query)
    assert report["outcomes"]["old"] == {k: v1[k] for k in ("correct", "wrong", "rejected")}
    assert report["outcomes"]["new"] == {k: v2[k] for k in ("correct", "wrong", "rejected")}
    # after the upgrade: most queries accepted and correct, wrong matches rare
    assert v2["correct"] > n / 2 and v2["wrong"] <= 0.05 * n
    # v1 before it: a working open-set system (a fifth correct, wrong rare), and v2 better
    assert v1["correct"] >= n / 5 and v1["wrong"] <= 0.05 * n
    assert v2["correct"] > v1["correct"]
