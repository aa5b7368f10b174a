"""examples/rollout.sh: exits non-zero at the failing step, naming it, and rolls back after
the upgrade; a clean run upgrades, shadows, backfills and verifies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli_helpers import store_sha256
from gallery import thresholds
from gallery.store import Store

pytest.importorskip("torch")
from tiny_models import make_onnx_encoder, write_digit_folder  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "rollout.sh"
GALLERY = str(Path(sys.executable).with_name("gallery"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("script")
    make_onnx_encoder(root / "v1.onnx", seed=0)
    make_onnx_encoder(root / "v2.onnx", seed=1)
    write_digit_folder(root / "images", n_per_class=4, seed=0)
    write_digit_folder(root / "eval", n_per_class=4, seed=2)
    write_digit_folder(root / "queries", n_per_class=1, seed=1)
    store = root / "stores" / "base.h5"  # models outside its folder: recorded absolute, copies find them
    store.parent.mkdir()
    for args in (["init", store, "--model", root / "v1.onnx"], ["enroll", store, "--images", root / "images"]):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.stdout + result.stderr
    return root, store


def rollout(setup, tmp_path, images: bool = True, calibrate_far: str | None = None,
            **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    root, base = setup
    store = tmp_path / "g.h5"
    shutil.copytree(base, store)
    if calibrate_far is not None:  # v1's own threshold, at this FAR
        result = CliRunner().invoke(app, ["threshold", "calibrate", str(store), "--data", str(root / "eval"),
                                          "--target-far", calibrate_far])
        assert result.exit_code == 0, result.stdout + result.stderr
    args = [str(store), str(root / "v2.onnx"), str(root / "eval"), str(root / "queries")]
    args += [str(root / "images")] if images else []
    full_env = {**os.environ, "GALLERY": GALLERY, "WORK": str(tmp_path / "work"), **env}
    run = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                         timeout=300)
    return run, store


def active(store: Path) -> str:
    with Store.open(store) as st:
        return st.active_model


def test_failed_gate_stops_before_upgrade(setup, tmp_path):
    root, base = setup
    before = store_sha256(base)
    run, store = rollout(setup, tmp_path)  # default gate: the criterion, which random nets fail
    assert run.returncode == 10, run.stderr
    assert "FAILED at step 'check-compat'" in run.stderr
    assert store_sha256(store) == before


def test_too_many_flips_stops_before_the_switch(setup, tmp_path):
    run, store = rollout(setup, tmp_path, GATES="--max-new-drop 1", MAX_FLIP_RATE="-1")
    assert run.returncode == 12, run.stderr
    assert "FAILED at step 'shadow'" in run.stderr and "v1 is still the query model" in run.stderr
    assert active(store) == "v1"
    with Store.open(store) as st:
        assert [e["event"] for e in st.history()][-1] == "stage"


def test_failure_after_the_switch_rolls_back(setup, tmp_path):
    root, _ = setup
    missing = tmp_path / "no-such-images"  # backfill refuses a missing image root: exit 2
    run, store = rollout(setup, tmp_path, images=False, GATES="--max-new-drop 1", MAX_FLIP_RATE="1")
    assert run.returncode == 0, run.stderr
    args = [str(store), str(root / "v1.onnx"), str(root / "eval"), str(root / "queries"), str(missing)]
    assert active(store) == "v2"
    env = {**os.environ, "GALLERY": GALLERY, "WORK": str(tmp_path / "work2"), "GATES": "--max-new-drop 1",
           "MAX_FLIP_RATE": "1"}
    back = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    assert back.returncode == 13, back.stderr  # v2 -> v1 again, then the backfill step fails
    assert "FAILED at step 'backfill'" in back.stderr and "rolling back" in back.stderr
    assert active(store) == "v2"


def test_clean_rollout(setup, tmp_path):
    run, store = rollout(setup, tmp_path, GATES="--max-new-drop 1", MAX_FLIP_RATE="1")
    assert run.returncode == 0, run.stderr
    assert "5/6 backfill from" in run.stderr and "rollout: done" in run.stderr
    with Store.open(store) as st:
        assert st.active_model == "v2" and set(st.columns()["model"]) == {"v2"}  # every image backfilled
        assert st.model("v1").thresholds.get("v2") is not None  # old->new, for a later rollback
        fars = {t["far"] for t in thresholds.show(st)["pairs"]}
    assert (tmp_path / "work" / "shadow.json").is_file()
    # v1 had no threshold: check-compat at 1e-4, and v1's own threshold is the report's old/old
    assert "(thresholds at FAR 0.0001)" in run.stderr
    assert _fars(tmp_path / "work") == (1e-4, {1e-4}) and fars == {1e-4}


def _fars(work: Path) -> tuple[float, set]:
    """check-compat's target FAR and the FARs of the thresholds the stage recorded."""
    report = json.loads((work / "report.json").read_text())
    return report["config"]["target_far"], {t["far"] for t in json.loads((work / "stage.json").read_text())
                                            ["thresholds"]}


@pytest.mark.parametrize("given, expected", [(None, 0.01), ("0.05", 0.05)])
def test_target_far_defaults_to_the_query_models_own_far(setup, tmp_path, given, expected):
    """v2's thresholds are calibrated at the FAR of v1's own (threshold show's `far`; 1e-4 when
    v1 has none: test_clean_rollout); TARGET_FAR overrides it."""
    calibrated = "0.01"
    run, store = rollout(setup, tmp_path, calibrate_far=calibrated, GATES="--max-new-drop 1", MAX_FLIP_RATE="1",
                         **({"TARGET_FAR": given} if given else {}))
    assert run.returncode == 0, run.stderr
    assert f"(thresholds at FAR {expected:g})" in run.stderr
    assert _fars(tmp_path / "work") == (expected, {expected})
    with Store.open(store) as st:
        fars = {(t["query"], t["rows"]): t["far"] for t in thresholds.show(st)["pairs"]}
    assert fars[("v2", "v2")] == fars[("v2", "v1")] == expected
    assert fars[("v1", "v1")] == float(calibrated)  # v1's own threshold is kept


def test_usage(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "only-one"], capture_output=True, text=True)
    assert run.returncode == 2 and "rollout.sh STORE" in run.stderr
