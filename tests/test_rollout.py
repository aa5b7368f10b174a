"""Rollout on real digit images with real ONNX encoders and real check-compat reports:
refused upgrades leave the store byte-identical, thresholds per pair, mixed-version search
against a brute-force reference, exact rollback, aliases, prune, staging, shadow
(backfill: tests/test_rollout_backfill.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import ok, report, run, store_sha256
from gallery.encoder import embed_paths, load_encoder
from gallery.fingerprint import file_sha256
from gallery.preprocess import l2_normalize
from gallery.store import Store

pytest.importorskip("torch")


def queries(root: Path, model: str) -> np.ndarray:
    paths = sorted((root / "probes").rglob("*.png"))
    return l2_normalize(embed_paths(load_encoder(root / model), paths)), paths


def test_failing_or_mismatched_report_refused_store_byte_identical(rollout_work, tmp_path):
    root, store, passing, failing = rollout_work
    before = store_sha256(store)
    refused = run("upgrade", store, "--model", root / "v2.onnx", "--report", failing)
    assert refused.exit_code == 1 and "require_criterion" in refused.stderr
    assert "upgrade refused" in refused.stderr and "\n" not in refused.stderr.strip()
    other = report(root, "v1.onnx", "v3.onnx", "v3.json", "--max-new-drop", "1")
    backwards = report(root, "v2.onnx", "v1.onnx", "back.json", "--max-new-drop", "1")
    (tmp_path / "junk.json").write_text("{not json")
    for args, message in (
        (("--model", root / "v2.onnx", "--report", other), "new model"),
        (("--model", root / "v2.onnx", "--report", backwards), "old model"),
        (("--model", root / "v2.onnx", "--report", tmp_path / "junk.json"), "not JSON"),
        (("--model", root / "nope.onnx", "--report", passing), "not found"),
        (("--model", root / "v2.onnx", "--report", passing, "--version", "bad name!"), "invalid model version"),
    ):
        result = run("upgrade", store, *args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
    assert store_sha256(store) == before
    with Store.open(store) as st:
        assert st.active_model == "v1" and st.model_versions() == ["v1"]


def test_force_is_recorded(rollout_work):
    root, store, _, failing = rollout_work
    result = ok("upgrade", store, "--model", root / "v2.onnx", "--report", failing, "--force", "--json")
    assert result["forced"] and "gate require_criterion failed" in result["forced_over"]
    events = ok("history", store, "--json")
    upgrade = [e for e in events if e["event"] == "upgrade"][-1]
    assert upgrade["forced"] and upgrade["user"] and upgrade["report"]["sha256"] == file_sha256(failing)
    assert upgrade["report"]["passed"] is False


def test_upgrade_mixed_search_and_exact_rollback(rollout_work):
    root, store, passing, _ = rollout_work
    q1, paths = queries(root, "v1.onnx")
    before = ok("search", store, "--embeddings", _save(root, "q1.npy", q1), "-k", "5", "--json")
    with Store.open(store) as st:
        v1_before = st.model("v1")
    result = ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing, "--json")
    assert (result["from"], result["to"], result["forced"]) == ("v1", "v2", False)
    rep = json.loads(passing.read_text())
    calibrated = {(t["query"], t["gallery"]): t["threshold"] for t in rep["thresholds"]}
    with Store.open(store) as st:
        assert st.active_model == "v2"
        assert st.model("v2").thresholds == {"v1": calibrated[("new", "old")], "v2": calibrated[("new", "new")]}
        # v1 had no threshold of its own: the report's old/old fills it (never overriding an operator's)
        assert not v1_before.thresholds and st.model("v1").thresholds == {"v1": calibrated[("old", "old")]}
        assert st.model("v2").compat_report["sha256"] == file_sha256(passing)
    # New enrolments use v2; v2 queries search v1 and v2 rows, each hit names its model.
    ok("enroll", store, "--images", root / "later")
    q2, _ = queries(root, "v2.onnx")
    hits = ok("search", store, "--image", root / "probes", "-k", "60", "--threshold", "-1", "--json")
    with Store.open(store) as st:
        cols, emb = st.columns(), st.embeddings()
        thresholds = st.model("v2").thresholds
    assert set(cols["model"]) == {"v1", "v2"}
    reference = q2 @ emb.T  # brute force over every row, both versions
    for qi, rec in enumerate(hits):
        assert {h["model_version"] for h in rec["hits"]} == {"v1", "v2"}
        for h in rec["hits"]:
            assert h["model_version"] == cols["model"][h["row"]]
            assert h["score"] == pytest.approx(reference[qi, h["row"]], abs=1e-5)
        top = np.sort(reference[qi])[::-1][:60]
        assert np.allclose([h["score"] for h in rec["hits"]], top, atol=1e-5)
    calibrated_hits = ok("search", store, "--image", root / "probes", "-k", "60", "--json")
    for rec in calibrated_hits:  # each accepted hit clears the threshold of its own pair
        assert all(h["score"] >= thresholds[h["model_version"]] - 1e-6 for h in rec["hits"] if h["accepted"])
        assert all(h["accepted"] == (h["score"] >= thresholds[h["model_version"]]) for h in rec["hits"])
    # Rollback: one switch; v1 queries see exactly what they saw before on the v1 rows.
    back = ok("rollback", store, "--json")
    assert (back["from"], back["to"]) == ("v2", "v1")
    after = ok("search", store, "--embeddings", root / "q1.npy", "-k", "5", "--json")
    with Store.open(store) as st:
        assert st.active_model == "v1" and st.model("v1").thresholds == {"v1": calibrated[("old", "old")]}
        v1_rows = set(np.flatnonzero(st.columns()["model"] == "v1").tolist())
    for old_rec, new_rec in zip(before, after):
        kept = [h for h in new_rec["hits"] if h["row"] in v1_rows]
        assert [h["item_id"] for h in kept] == [h["item_id"] for h in old_rec["hits"]][: len(kept)]
        assert [h["score"] for h in kept] == [h["score"] for h in old_rec["hits"]][: len(kept)]
    assert run("rollback", store).exit_code == 2  # nothing before v1
    events = [e["event"] for e in ok("history", store, "--json")]
    assert events[-2:] == ["activate", "rollback"] and "upgrade" in events


def _save(root: Path, name: str, array: np.ndarray) -> Path:
    np.save(root / name, array)
    return root / name


def test_aliases_and_prune(rollout_work):
    root, store, passing, _ = rollout_work
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    ok("alias", "set", "prod", "v2", "--store", store)
    assert ok("alias", "list", "--store", store, "--json") == {"prod": "v2"}
    assert run("alias", "set", "x", "v9", "--store", store).exit_code == 2
    ok("rollback", store)
    kept = ok("prune", store, "--json")
    assert kept["removed"] == [] and kept["kept"]["v2"] == "alias prod"
    ok("alias", "remove", "prod", "--store", store)
    dry = ok("prune", store, "--dry-run", "--json")
    assert dry["removed"] == ["v2"]
    with Store.open(store) as st:
        assert "v2" in st.model_versions()
    ok("prune", store, "--json")
    with Store.open(store) as st:
        assert st.model_versions() == ["v1"] and "v2" not in st.model("v1").thresholds
        assert st.verify()["ok"]
    assert run("rollback", store).exit_code == 2


def test_shadow_matches_brute_force(rollout_work, tmp_path):
    root, store, passing, _ = rollout_work
    assert run("shadow", store, "--queries", root / "probes").exit_code == 2  # no previous model yet
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing)
    k = 5
    out = tmp_path / "shadow.json"
    result = ok("shadow", store, "--queries", root / "probes", "-k", k, "--out", out, "--json")
    assert json.loads(out.read_text())["config"]["k"] == k and (result["old"], result["new"]) == ("v1", "v2")
    with Store.open(store) as st:
        emb, identity = st.embeddings(), st.columns()["identity"]
        t1, t2 = st.model("v1").thresholds, st.model("v2").thresholds
    q1, paths = queries(root, "v1.onnx")
    q2, _ = queries(root, "v2.onnx")
    overlaps, flips, regressed = [], 0, 0
    outcomes = {"old": {"correct": 0, "wrong": 0, "rejected": 0}, "new": {"correct": 0, "wrong": 0, "rejected": 0}}
    for i in range(len(paths)):
        s1, s2 = q1[i] @ emb.T, q2[i] @ emb.T
        a, b = np.argsort(-s1)[:k], np.argsort(-s2)[:k]
        overlaps.append(len(set(a) & set(b)) / k)
        d1 = identity[a[0]] if s1[a[0]] >= t1["v1"] else None  # every row is v1: the top hit decides
        d2 = identity[b[0]] if s2[b[0]] >= t2["v1"] else None
        flips += d1 != d2
        truth = paths[i].parent.name
        for side, d in (("old", d1), ("new", d2)):
            outcomes[side]["rejected" if d is None else ("correct" if d == truth else "wrong")] += 1
        regressed += (d1 == truth and d2 != truth) or (d1 is None and d2 is not None and d2 != truth)
    assert result["topk_overlap"]["mean"] == pytest.approx(np.mean(overlaps))
    assert result["decisions"]["changed"] == flips and result["queries"] == len(paths)
    assert result["outcomes"] == outcomes and result["decisions"]["regressed"] == regressed
    assert "accuracy" in result  # probes are ROOT/<identity>/<image>


def test_stage_then_shadow_before_cutover(rollout_work):
    root, store, passing, _ = rollout_work
    staged = ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing, "--stage", "--json")
    assert staged["event"] == "stage" and staged["to"] == "v2"
    with Store.open(store) as st:
        assert st.active_model == "v1" and "v1" in st.model("v2").thresholds
    result = ok("shadow", store, "--queries", root / "probes", "--json")  # defaults: staged v2 vs query model v1
    assert (result["old"], result["new"]) == ("v1", "v2") and result["queries"] == 20
    explicit = ok("shadow", store, "--queries", root / "probes", "--old", "v1", "--new", "v2", "--json")
    assert explicit["per_query"] == result["per_query"]
    switched = ok("upgrade", store, "--model", root / "v2.onnx", "--report", passing, "--json")
    assert switched["event"] == "upgrade" and not switched["registered"]
    assert ok("rollback", store, "--json")["to"] == "v1"
