"""Report schema: readers (the rollout) refuse foreign or incomplete reports; gate logic."""

import json
from types import SimpleNamespace

import pytest

from gallery.compat.gates import evaluate_gates
from gallery.compat.report import SCHEMA_VERSION, load_report, validate_report, write_report
from gallery.errors import BadInput


def _minimal():
    return {
        "schema_version": SCHEMA_VERSION, "passed": True, "gates": [], "failed_gates": [],
        "models": {"old": {"sha256": "a"}, "new": {"sha256": "b"}}, "data": {}, "protocol": {},
        "headline": {}, "comparisons": {}, "criterion": {}, "config": {},
        "thresholds": [{"query": "new", "gallery": "old", "query_sha256": "b", "gallery_sha256": "a",
                        "threshold": 0.5, "far": 1e-4}],
    }


def test_roundtrip_and_refusals(tmp_path):
    write_report(_minimal(), tmp_path / "r.json")
    assert load_report(tmp_path / "r.json")["thresholds"][0]["threshold"] == 0.5
    for mutate, message in [
        (lambda r: r.update(schema_version="gallery.compat-report/0"), "schema"),
        (lambda r: r.pop("thresholds"), "thresholds"),
        (lambda r: r["models"]["new"].pop("sha256"), "models.new.sha256"),
        (lambda r: r["thresholds"][0].pop("far"), "far"),
        (lambda r: r.update(passed="yes"), "passed"),
    ]:
        report = _minimal()
        mutate(report)
        with pytest.raises(BadInput, match=message):
            validate_report(report)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInput, match="not JSON"):
        load_report(tmp_path / "bad.json")
    with pytest.raises(BadInput, match="not found"):
        load_report(tmp_path / "missing.json")


def _config(**kw):
    base = dict(require_criterion=False, min_gain=None, max_new_drop=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_gates():
    values = {"old/old": 0.6, "new/new": 0.8, "new->old": 0.7, "reference/reference": 0.85}
    gates, summary = evaluate_gates(_config(require_criterion=True, min_gain=0.35, max_new_drop=0.04), values)
    by_name = {g["name"]: g for g in gates}
    assert summary["gain"]["value"] == pytest.approx((0.7 - 0.6) / (0.85 - 0.6))
    assert by_name["require_criterion"]["passed"] and by_name["min_gain"]["passed"]
    assert summary["new_drop"]["value"] == pytest.approx(0.05) and not by_name["max_new_drop"]["passed"]
    # equal is not an improvement; a reference no better than old makes the gain undefined
    values = {"old/old": 0.6, "new/new": 0.8, "new->old": 0.6, "reference/reference": 0.6}
    gates, summary = evaluate_gates(_config(require_criterion=True, min_gain=0.0), values)
    assert summary["gain"]["value"] is None and not any(g["passed"] for g in gates)
    # without a reference the drop is measured against old/old
    gates, summary = evaluate_gates(_config(max_new_drop=0.0), {"old/old": 0.6, "new/new": 0.7, "new->old": 0.65})
    assert summary["new_drop"]["baseline"] == "old/old" and gates[0]["passed"]
    assert json.dumps(summary)  # JSON-ready
