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


def _checked_seeds(tmp_path, seeds, identities=30):
    """check-compat reports and saved embeddings of two methods (mixbct better than l2) per seed."""
    import numpy as np

    from gallery.compat.checker import CheckConfig, run_check
    from gallery.compat.evalsets.embeddings import write_embeddings

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(identities), 4)
    centers = rng.normal(size=(identities, 16))
    paths, reports = {}, {}
    for seed in seeds:
        old = centers[labels] + 0.9 * rng.normal(size=(len(labels), 16))
        for method, noise in (("mixbct", 0.5), ("l2", 1.2)):
            new = centers[labels] + noise * rng.normal(size=(len(labels), 16))
            folder = tmp_path / f"s{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            emb = folder / f"{method}.emb.h5"
            write_embeddings(emb, {"old": old, "new": new}, {}, labels=labels)
            report = run_check(CheckConfig(embeddings=str(emb))).report
            check = folder / f"{method}.check.json"
            check.write_text(json.dumps(report))
            paths.setdefault(seed, {"open-class": {"weak": {}}})["open-class"]["weak"][method] = check
            reports.setdefault(seed, {"open-class": {"weak": {}}})["open-class"]["weak"][method] = report
    return paths, reports


def test_paired_gaps_match_a_naive_bootstrap_and_the_reports(tmp_path):
    """Per-probe hits are recomputed from saved embeddings, checked against the report's
    rank-1, and the paired gap's interval comes from resampling probes."""
    import numpy as np

    import reproduce_paired

    paths, reports = _checked_seeds(tmp_path, (0, 1))
    hits = reproduce_paired.collect(paths, reports, check_seed=0)
    a, b = hits["open-class"]["weak"]["mixbct"]["new->old"], hits["open-class"]["weak"]["l2"]["new->old"]
    assert a.shape == b.shape and a.shape[0] == 2
    summary = reproduce_paired.summarise(hits, draws=400)
    gap = summary["open-class"]["weak"]["gaps_vs_mixbct"]["l2"]["new->old"]
    per_seed = [reports[s]["open-class"]["weak"]["mixbct"]["headline"]["values"]["new->old"]
                - reports[s]["open-class"]["weak"]["l2"]["headline"]["values"]["new->old"] for s in (0, 1)]
    assert gap["per_seed"] == pytest.approx(per_seed) and gap["gap"] == pytest.approx(np.mean(per_seed))
    # naive bootstrap: the same probe resample for both methods and both seeds
    draws = [(a - b)[:, idx].mean() for idx in
             (np.random.default_rng(i).integers(0, a.shape[1], a.shape[1]) for i in range(400))]
    lo, hi = np.percentile(draws, [2.5, 97.5])
    assert gap["ci95"][0] == pytest.approx(lo, abs=0.03) and gap["ci95"][1] == pytest.approx(hi, abs=0.03)
    md = reproduce_paired.markdown(summary, {"name": "t", "seeds": [0, 1]}, {}, {}, 1.0)
    assert "| mixbct |" in md and "| l2 |" in md


def test_runs_of_other_seeds_merge_into_the_comparison_of_all_seeds(tmp_path):
    """Seed 0 from one run and seeds 1-2 from a later one, merged, give exactly the tables of
    one run of all three seeds; each cell's seed spread is the reports' own per-seed rank-1."""
    import statistics

    import reproduce_paired

    paths, reports = _checked_seeds(tmp_path, (0, 1, 2))
    preset = {"name": "t", "methods": {"names": ["independent", "mixbct", "l2"]}, "scenarios": ["open-class"]}
    runs = {"all": (0, 1, 2), "first": (0,), "later": (1, 2)}
    for name, seeds in runs.items():
        (tmp_path / name).mkdir()
        reproduce_paired.write_comparison(tmp_path / name, "", preset, {s: paths[s] for s in seeds},
                                          {s: reports[s] for s in seeds}, {"data": 1.0}, {"data": 2.0},
                                          60.0 * len(seeds), draws=300)
    md = reproduce_paired.main([str(tmp_path / "merged"), "--merge", str(tmp_path / "first"),
                                str(tmp_path / "later"), "--bootstrap", "300"])
    assert md is None  # main prints
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    whole = json.loads((tmp_path / "all" / "results.json").read_text())
    assert merged["summary"] == whole["summary"] and merged["preset"]["seeds"] == [0, 1, 2]
    assert [r["seeds"] for r in merged["runs"]] == [[0], [1, 2]] and merged["wall_s"] == 180.0
    assert set(merged["cpu_s"]) == {"data", "data@seeds1-2"}
    row = merged["summary"]["open-class"]["weak"]["rows"]["l2"]
    per_seed = [reports[s]["open-class"]["weak"]["l2"]["headline"]["values"]["new->old"] for s in (0, 1, 2)]
    assert row["new_old_seeds"] == pytest.approx(per_seed)
    assert row["new_old_sd"] == pytest.approx(statistics.stdev(per_seed))
    text = (tmp_path / "merged" / "results.md").read_text()
    assert "pooled over seeds 0, 1, 2" in text and "seeds 1, 2 from" in text
    assert f"± {statistics.stdev(per_seed):.3f} ({', '.join(f'{v:.3f}' for v in per_seed)})" in text
    # the same merge from the merged folder's own files: rewrite_from_hits keeps the runs
    reproduce_paired.rewrite_from_hits(tmp_path / "merged", draws=300)
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["summary"] == whole["summary"]
    # refused: a seed twice, another preset, other eval data (probe counts differ)
    with pytest.raises(SystemExit, match="seeds \\[0\\] are in an earlier run"):
        reproduce_paired.merge_runs(tmp_path / "x", [tmp_path / "first", tmp_path / "all"])
    other = tmp_path / "other"
    other.mkdir()
    reproduce_paired.write_comparison(other, "", {**preset, "name": "u"}, {1: paths[1]}, {1: reports[1]},
                                      {}, {}, 1.0, draws=10)
    with pytest.raises(SystemExit, match="preset differs .* in name"):
        reproduce_paired.merge_runs(tmp_path / "x", [tmp_path / "first", other])
    small_paths, small_reports = _checked_seeds(tmp_path / "small", (1,), identities=20)
    (tmp_path / "small" / "run").mkdir()
    reproduce_paired.write_comparison(tmp_path / "small" / "run", "", preset, small_paths, small_reports,
                                      {}, {}, 1.0, draws=10)
    with pytest.raises(SystemExit, match="probe counts differ"):
        reproduce_paired.merge_runs(tmp_path / "x", [tmp_path / "first", tmp_path / "small" / "run"])


@pytest.mark.parametrize("name", ["cpu-large", "gpu-medium"])
def test_large_presets_and_method_variants(name):
    preset = reproduce.load_preset(name, [])
    assert preset["name"] == name
    assert reproduce.method_entry(preset, "bct-official") == ("bct", {"bct_variant": "official"})
    assert reproduce.method_entry(preset, "bct-scaled") == ("bct", {"bct_variant": "scaled"})
    assert reproduce.method_entry(preset, "mixbct")[0] == "mixbct"
    assert reproduce.method_entry(preset, "nccl") == ("nccl", {})
    assert {"independent", "l2", "unibct", "nccl", "auto"} <= set(preset["methods"]["names"])
    assert len(preset["seeds"]) == 3 and preset["scenarios"] == ["open-class", "open-data"]
    assert set(preset["old"]) == {"weak", "strong"}


def test_every_preset_resolves_and_builds_its_data_command(tmp_path, monkeypatch):
    """Each shipped preset parses, names itself after its file, and turns into one
    `gallery data glyphs` call (cpu-large keeps 200 eval identities via --eval-fraction)."""
    names = sorted(p.stem for p in (EXAMPLES / "presets").glob("*.toml"))
    assert {"cpu", "cpu-large", "gpu-medium", "gpu"} <= set(names)
    for name in names:
        preset = reproduce.load_preset(name, [])
        assert preset["name"] == name
        assert {"data", "train", "old", "new", "methods"} <= set(preset)
        run = reproduce.Runner(tmp_path / name, jobs=1)
        monkeypatch.setattr(run, "flush", lambda: None)  # queue only; nothing is trained here
        reproduce.build_data(run, preset, list(preset.get("scenarios", ["open-class"])))
        (step,) = run.pending
        args = step[2]
        assert args[:2] == ["data", "glyphs"]
        assert args[args.index("--identities") + 1] == str(preset["data"]["identities"])
        if "eval_fraction" in preset["data"]:
            fraction = float(args[args.index("--eval-fraction") + 1])
            assert round(preset["data"]["identities"] * fraction) == 200
        else:
            assert "--eval-fraction" not in args
