"""examples/rollout.sh: exits non-zero at the failing step, naming it, and rolls back after
the upgrade; a clean run upgrades, shadows, backfills and verifies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli_helpers import store_sha256
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


def rollout(setup, tmp_path, images: bool = True, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    root, base = setup
    store = tmp_path / "g.h5"
    shutil.copytree(base, store)
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
    assert (tmp_path / "work" / "shadow.json").is_file()


def test_usage(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "only-one"], capture_output=True, text=True)
    assert run.returncode == 2 and "rollout.sh STORE" in run.stderr
