"""Thresholds through a model's life (issue 16, item 1): `gallery threshold calibrate|show|set`,
init/upgrade/rollback naming uncalibrated pairs, and the mixed-version open-set decision right
after upgrade, rollback and re-upgrade against a naive per-query loop over every row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import ok, run, store_sha256
from gallery.encoder import embed_paths, load_encoder
from gallery.preprocess import l2_normalize
from gallery.store import Store

pytest.importorskip("torch")
from tiny_models import make_onnx_encoder, write_digit_folder  # noqa: E402

FAR = "0.02"  # small eval set: a FAR its impostor pairs support, so thresholds accept some hits


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("thresholds")
    for seed, name in enumerate(("v1", "v2")):
        make_onnx_encoder(root / f"{name}.onnx", seed=seed)
    write_digit_folder(root / "gallery", n_per_class=3, seed=0)
    write_digit_folder(root / "probes", n_per_class=3, seed=1)
    for p in sorted((root / "probes").rglob("*.png"))[::3]:  # enrolled with v2 after the upgrade
        (root / "later" / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "later" / p.parent.name / f"late{p.name}")
    write_digit_folder(root / "eval", n_per_class=6, seed=2)
    store = root / "stores" / "base.h5"  # models outside its folder: recorded absolute, copies find them
    store.parent.mkdir()
    created = ok("init", store, "--model", root / "v1.onnx", "--json")
    assert created["uncalibrated"] == ["v1->v1"]
    ok("enroll", store, "--images", root / "gallery")
    report = root / "report.json"
    ok("check-compat", "--old", root / "v1.onnx", "--new", root / "v2.onnx", "--data", root / "eval",
       "--json", report, "--max-new-drop", "1", "--old-to-new", "--target-far", FAR, "--impostor-pairs", "3000")
    return root, store, report


@pytest.fixture
def work(base, tmp_path):
    root, store, report = base
    copy = tmp_path / "g.h5"
    shutil.copytree(store, copy)
    return root, copy, report


def _report_thresholds(report: Path) -> dict:
    rep = json.loads(report.read_text())
    names = {"old": "v1", "new": "v2"}
    return {(names[t["query"]], names[t["gallery"]]): t["threshold"] for t in rep["thresholds"]}


def test_init_warns_and_search_rejects_until_calibrated(work):
    root, store, report = work
    created = run("init", store.with_name("x.h5"), "--model", root / "v1.onnx")
    assert created.exit_code == 0 and "uncalibrated model pair(s) v1->v1" in created.stderr
    before = ok("search", store, "--image", root / "probes", "-k", "3", "--json")
    assert all(r["rejected"] and r["uncalibrated_pairs"] == ["v1->v1"] for r in before)
    shown = ok("threshold", "show", store, "--json")
    assert shown["uncalibrated"] == ["v1->v1"] and shown["pairs"][0]["threshold"] is None


def test_calibrate_from_data_equals_the_check_compat_report(work):
    """Same protocol, same seed: the calibrated v1/v1 threshold is check-compat's old/old one."""
    root, store, report = work
    result = ok("threshold", "calibrate", store, "--data", root / "eval", "--target-far", FAR,
                "--impostor-pairs", "3000", "--json")
    assert result["uncalibrated"] == [] and [(e["query"], e["rows"]) for e in result["calibrated"]] == [("v1", "v1")]
    expected = _report_thresholds(report)[("v1", "v1")]
    with Store.open(store) as st:
        assert st.thresholds("v1") == {"v1": pytest.approx(expected)}
        assert st.history()[-1]["event"] == "calibrate"
    assert [p["far"] for p in ok("threshold", "show", store, "--json")["pairs"]] == [float(FAR)]
    # after staging v2, the served pairs grow to v1/v2 x v1/v2 rows: all four calibrated from the data
    ok("upgrade", store, "--model", root / "v2.onnx", "--report", report, "--stage")
    with Store.open(store) as st:
        for (q, r), value in _report_thresholds(report).items():
            st_value = st.thresholds(q).get(r)
            assert st_value is None or st_value == pytest.approx(value)
    again = ok("threshold", "calibrate", store, "--data", root / "eval", "--target-far", FAR,
               "--impostor-pairs", "3000", "--json")
    pairs = {(e["query"], e["rows"]): e["threshold"] for e in again["calibrated"]}
    assert set(pairs) == {("v1", "v1"), ("v2", "v1"), ("v2", "v2")}  # no v2 rows yet: v1->v2 not served
    for pair, value in pairs.items():
        assert value == pytest.approx(_report_thresholds(report)[pair])


def test_calibrate_from_report_set_and_refusals_leave_the_store_identical(work, tmp_path):
    root, store, report = work
    before = store_sha256(store)
    (tmp_path / "junk.json").write_text("{}")
    for args, message in (
        (("calibrate", store), "give either --data"),
        (("calibrate", store, "--data", root / "eval", "--report", report), "give either --data"),
        (("calibrate", store, "--data", tmp_path / "nope"), "not found"),
        (("calibrate", store, "--data", root / "eval", "--target-far", "2"), "--target-far"),
        (("set", store, "v9", "v1", "0.3"), "unknown model version 'v9'"),
        (("set", store, "v1", "v1", "7"), "[-1, 1]"),
        (("calibrate", tmp_path / "none.h5", "--data", root / "eval"), "store not found"),
    ):
        result = run("threshold", *args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert store_sha256(store) == before
    copied = ok("threshold", "calibrate", store, "--report", report, "--json")
    assert [(e["query"], e["rows"], e["threshold"]) for e in copied["calibrated"]] == [
        ("v1", "v1", _report_thresholds(report)[("v1", "v1")])]
    report_far = json.loads(report.read_text())["thresholds"][0]["far"]
    assert [p["far"] for p in ok("threshold", "show", store, "--json")["pairs"]] == [report_far]
    assert ok("threshold", "set", store, "v1", "v1", "0.25", "--json")["threshold"] == 0.25
    with Store.open(store) as st:
        assert st.thresholds("v1") == {"v1": 0.25}
    assert [p["far"] for p in ok("threshold", "show", store, "--json")["pairs"]] == [None]  # set by hand



def test_the_gallery_object_shows_calibrates_and_sets(work):
    """The Python API the `threshold` commands call: refusals raise BadInput and change nothing,
    the copied value is the report's, and the same Gallery reads back its own writes."""
    import gallery
    from gallery.errors import BadInput

    root, store, report = work
    g = gallery.open(store)
    assert g.thresholds()["uncalibrated"] == ["v1->v1"]
    before = store_sha256(store)
    for call, message in ((lambda: g.set_threshold("v1", "v1", float("nan")), r"\[-1, 1\]"),
                          (lambda: g.set_threshold("v1", "v9", 0.1), "unknown model version 'v9'"),
                          (lambda: g.calibrate(), "give either"),
                          (lambda: g.calibrate(data=root / "eval", target_far=3.0), "--target-far")):
        with pytest.raises(BadInput, match=message):
            call()
    assert store_sha256(store) == before
    copied = g.calibrate(report=report)
    expected = _report_thresholds(report)[("v1", "v1")]
    assert [(e["query"], e["rows"], e["threshold"]) for e in copied["calibrated"]] == [("v1", "v1", expected)]
    far = json.loads(report.read_text())["thresholds"][0]["far"]
    assert g.thresholds()["pairs"] == [{"query": "v1", "rows": "v1", "threshold": expected, "served": True, "far": far}]
    assert g.set_threshold("v1", "v1", 0.25)["uncalibrated"] == []
    assert g.thresholds()["pairs"][0]["threshold"] == 0.25
    with Store.open(store) as st:
        assert st.thresholds("v1") == {"v1": 0.25} and st.history()[-1]["event"] == "threshold"

# ---- the open-set decision through upgrade, rollback, re-upgrade ----------------------------------

def _naive(st: Store, queries: np.ndarray, k: int) -> list[str | None]:
    """Per query: every live row scored in a Python loop, top k, each hit against its own pair's
    threshold (no threshold = never accepted), the largest margin wins."""
    cols, emb = st.columns(), st.embeddings()
    table = dict(st.model(st.active_model).thresholds)
    out = []
    for q in queries:
        scored = sorted(((float(emb[r] @ q), r) for r in range(len(emb)) if not cols["deleted"][r]),
                        key=lambda t: -t[0])[:k]
        best, best_margin = None, -np.inf
        for score, r in scored:
            limit = table.get(str(cols["model"][r]))
            if limit is not None and score >= limit and score - limit > best_margin:
                best, best_margin = str(cols["identity"][r]), score - limit
        out.append(best)
    return out


def _check(store: Path, root: Path, model: str, k: int = 5) -> list[str | None]:
    paths = sorted((root / "probes").rglob("*.png"))
    queries = l2_normalize(embed_paths(load_encoder(root / model), paths))
    records = ok("search", store, "--image", root / "probes", "-k", k, "--json")
    with Store.open(store) as st:
        expected = _naive(st, queries, k)
    assert [r["match"] for r in records] == expected
    for rec in records:  # every hit names its threshold; accepted means it clears it
        for h in rec["hits"]:
            assert h["accepted"] == (h["threshold"] is not None and h["score"] >= h["threshold"])
    return expected


def test_open_set_rule_through_upgrade_rollback_reupgrade(work):
    root, store, report = work
    ok("threshold", "calibrate", store, "--data", root / "eval", "--target-far", FAR, "--impostor-pairs", "3000")
    upgraded = ok("upgrade", store, "--model", root / "v2.onnx", "--report", report, "--json")
    assert upgraded["uncalibrated"] == []
    ok("enroll", store, "--images", root / "later")  # v2 rows next to the v1 rows
    decisions = {"upgrade": _check(store, root, "v2.onnx")}
    back = ok("rollback", store, "--json")
    assert back["to"] == "v1" and back["uncalibrated"] == []  # old->new came with the report (--old-to-new)
    decisions["rollback"] = _check(store, root, "v1.onnx")
    again = ok("upgrade", store, "--model", root / "v2.onnx", "--report", report, "--json")
    assert not again["registered"] and again["to"] == "v2"
    decisions["re-upgrade"] = _check(store, root, "v2.onnx")
    assert decisions["re-upgrade"] == decisions["upgrade"]
    for name, matches in decisions.items():  # not vacuous: some accepted, some rejected
        assert 0 < sum(m is not None for m in matches) < len(matches), (name, matches)


def test_rollback_without_old_to_new_names_the_uncalibrated_pair(work):
    root, store, _ = work
    plain = root / "plain.json"
    if not plain.is_file():
        ok("check-compat", "--old", root / "v1.onnx", "--new", root / "v2.onnx", "--data", root / "eval",
           "--json", plain, "--max-new-drop", "1", "--target-far", FAR, "--impostor-pairs", "3000")
    up = ok("upgrade", store, "--model", root / "v2.onnx", "--report", plain, "--json")
    assert up["uncalibrated"] == []  # old/old filled from the report: v1 had none
    ok("enroll", store, "--images", root / "later")
    back = run("rollback", store)
    assert back.exit_code == 0 and "uncalibrated model pair(s) v1->v2" in back.stderr
    records = ok("search", store, "--image", root / "probes", "-k", "5", "--json")
    assert all(not h["accepted"] for r in records for h in r["hits"] if h["model_version"] == "v2")
