"""examples/reproduce: preset overrides, and the table/claims computed from check reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import reproduce  # noqa: E402
import reproduce_report  # noqa: E402


def _report(old: float, new: float, cross: float, ref: float) -> dict:
    """The parts of a gallery.compat report the summary reads."""
    comp = {"verification": {"tar_at_far": [{"far": 1e-3, "tar": cross / 2}]}}
    return {
        "headline": {"metric": "rank1", "values": {"old/old": old, "new/new": new, "new->old": cross,
                                                   "reference/reference": ref}},
        "criterion": {"passed": cross > old, "margin": cross - old},
        "gain": {"value": (cross - old) / (ref - old)},
        "comparisons": {"new->old": comp, "new/new": comp, "old/old": comp},
    }


def test_claims_follow_the_numbers(tmp_path):
    reports = {"weak": {"independent": _report(0.5, 0.8, 0.0, 0.8), "l2": _report(0.5, 0.7, 0.6, 0.8),
                        "bct": _report(0.5, 0.75, 0.45, 0.8), "mixbct": _report(0.5, 0.72, 0.65, 0.8)},
               "strong": {"independent": _report(0.7, 0.8, 0.0, 0.8), "l2": _report(0.7, 0.78, 0.75, 0.8),
                          "mixbct": _report(0.7, 0.74, 0.72, 0.8)}}
    md = reproduce_report.write_results(tmp_path, "", {"name": "t"}, reports, {"x": 1.0}, 60.0, {"x": 2.0})
    data = json.loads((tmp_path / "results.json").read_text())
    weak, strong = data["claims"]["weak"], data["claims"]["strong"]
    assert weak["compatible_methods"] == ["l2", "mixbct"]          # bct 0.45 < 0.5: fails
    assert weak["best_cross_among_compatible"] == "mixbct" and weak["mixbct_new_new_ge_l2"]
    assert strong["best_cross_among_compatible"] == "l2" and not strong["mixbct_best_cross"]
    assert not strong["mixbct_new_new_ge_l2"]
    assert data["table"]["weak"]["l2"]["gain"] == pytest.approx(0.1 / 0.3)
    assert "| mixbct | 0.5000 | 0.7200 | 0.6500 | yes (+0.1500) | 0.500 |" in md
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_preset_overrides():
    preset = reproduce.load_preset("cpu", ["new.epochs=9", "methods.params.mixbct.mix_ratio=0.5",
                                           "new.head=cosface"])
    assert preset["new"]["epochs"] == 9 and preset["new"]["head"] == "cosface"
    assert preset["methods"]["params"]["mixbct"] == {"mix_ratio": 0.5, "credible_t": 0.9}
    assert set(preset["old"]) == {"weak", "strong"} and preset["old"]["weak"]["head"] == "softmax"
    gpu = reproduce.load_preset("gpu", [])
    assert gpu["data"]["image_size"] == 112 and gpu["new"]["arch"].startswith("iresnet")
    with pytest.raises(SystemExit):
        reproduce.load_preset("nope", [])
