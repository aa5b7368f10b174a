"""The messages issue 16 listed (item 9), each fixed: no internal placeholder in the upgrade
refusal, a directory named as such, `[faces]` visible in --help, human backfill status and
shadow lines (no Python dicts), shadow with nothing staged naming that (not rollback), and no
OpenCV log noise on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import ok, run, store_sha256
from gallery.store import ModelInfo, Store


def test_info_on_a_directory_says_it_is_a_directory(tmp_path):
    result = run("info", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path} is a directory but not a gallery store (no MANIFEST)"


def test_detect_help_shows_the_faces_extra():
    result = subprocess.run([sys.executable, "-m", "cli.main", "search", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).parents[1])})
    assert "YuNet ([faces] extra)" in result.stdout, result.stdout


def test_backfill_status_is_a_sentence_not_a_dict(tmp_path):
    store = tmp_path / "g.h5"
    with Store.create(store, ModelInfo(version="v1", dim=4, model_id="m")) as st:
        st.enroll(np.eye(4, dtype=np.float32), [f"i{n}" for n in range(4)])
    result = ok("backfill", store, "--status")
    assert "{" not in result.stdout and "live rows per model v1: 4" in result.stdout
    assert "no unfinished backfill" in result.stdout


def test_shadow_with_nothing_staged_says_so_not_rollback(tmp_path):
    from PIL import Image

    store = tmp_path / "g"
    with Store.create(store, ModelInfo(version="v1", dim=4, model_id="m")) as st:
        st.enroll(np.eye(4, dtype=np.float32), [f"i{n}" for n in range(4)])
    (tmp_path / "q").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "q" / "a.png")
    before = store_sha256(store)
    result = run("shadow", store, "--queries", tmp_path / "q")
    assert result.exit_code == 2 and "roll back" not in result.stderr
    assert result.stderr.strip() == (f"error: nothing to shadow in {store}: no model is staged and v1 replaced no other "
                                     "query model (run `gallery upgrade --stage` first, or pass --old and --new)")
    assert store_sha256(store) == before


pytest.importorskip("torch")
from tiny_models import make_onnx_encoder, write_digit_folder  # noqa: E402


def test_upgrade_refusal_names_the_given_file_not_a_placeholder(tmp_path):
    for seed, name in enumerate(("v1", "v2", "v3")):
        make_onnx_encoder(tmp_path / f"{name}.onnx", seed=seed)
    write_digit_folder(tmp_path / "eval", n_per_class=3, seed=2)
    (tmp_path / "s").mkdir()
    store = tmp_path / "s" / "g.h5"
    ok("init", store, "--model", tmp_path / "v1.onnx")
    ok("check-compat", "--old", tmp_path / "v1.onnx", "--new", tmp_path / "v3.onnx", "--data", tmp_path / "eval",
       "--json", tmp_path / "r.json", "--max-new-drop", "1", "--impostor-pairs", "200")
    before = store_sha256(store)
    result = run("upgrade", store, "--model", tmp_path / "v2.onnx", "--report", tmp_path / "r.json")
    assert result.exit_code == 2 and "pending" not in result.stderr
    assert f"is not the file given with --model {tmp_path / 'v2.onnx'}" in result.stderr
    assert store_sha256(store) == before
    # shadow's summary lines are sentences and tables, not Python dicts
    ok("check-compat", "--old", tmp_path / "v1.onnx", "--new", tmp_path / "v2.onnx", "--data", tmp_path / "eval",
       "--json", tmp_path / "r2.json", "--max-new-drop", "1", "--impostor-pairs", "200")
    ok("upgrade", store, "--model", tmp_path / "v2.onnx", "--report", tmp_path / "r2.json", "--stage")
    shadow = ok("shadow", store, "--queries", tmp_path / "eval")
    assert "{'" not in shadow.stdout and "decisions changed" in shadow.stdout
    assert "open-set outcomes" in shadow.stdout and "decisions side by side" in shadow.stdout


def test_face_detection_writes_no_opencv_log_lines(tmp_path):
    pytest.importorskip("cv2")
    from gallery.faces import assets

    found, missing = assets.locate()
    if missing:
        pytest.skip(f"face assets missing: {', '.join(missing[:3])}")
    code = ("import numpy as np; from gallery.faces.detect import YuNetDetector; "
            f"d = YuNetDetector({str(found['yunet'])!r}); d.detect(np.zeros((64, 64, 3), np.uint8)); "
            f"YuNetDetector({str(found['yunet'])!r}).detect(np.zeros((32, 32, 3), np.uint8))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert "WARN" not in proc.stderr and "setPreferableTarget" not in proc.stderr, proc.stderr
