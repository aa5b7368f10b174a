"""Model files (issue 16, item 5): recorded relative to the store's folder when inside it,
absolute otherwise; `gallery model set-path`; rollback and upgrade refuse a missing or changed model file
(store byte-identical) unless --allow-missing-model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cli_helpers import ok, run, store_sha256
from gallery.store import manifest as store_manifest

pytest.importorskip("torch")
from tiny_models import make_onnx_encoder, write_digit_folder  # noqa: E402


def _stored_path(store: Path, version: str) -> str:
    return str(store_manifest.load(store)["models"][version]["path"])  # as recorded, not resolved


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelfiles")
    make_onnx_encoder(root / "v1.onnx", seed=0)
    make_onnx_encoder(root / "v2.onnx", seed=1)
    write_digit_folder(root / "images", n_per_class=2, seed=0)
    write_digit_folder(root / "eval", n_per_class=4, seed=2)
    return root


def test_paths_relative_inside_the_store_folder_absolute_outside(models, tmp_path, monkeypatch):
    inside = tmp_path / "site"
    (inside / "models").mkdir(parents=True)
    shutil.copy(models / "v1.onnx", inside / "models" / "v1.onnx")
    monkeypatch.chdir(tmp_path)
    ok("init", Path("site/g.h5"), "--model", Path("site/models/v1.onnx"))  # typed relative to the cwd
    assert _stored_path(inside / "g.h5", "v1") == "models/v1.onnx"
    ok("init", Path("site/h.h5"), "--model", models / "v1.onnx")
    assert _stored_path(inside / "h.h5", "v1") == str(models / "v1.onnx")
    # the whole folder moves; searched from elsewhere, the model is still found
    shutil.move(str(inside), tmp_path / "moved")
    monkeypatch.chdir(models)
    info = ok("info", tmp_path / "moved" / "g.h5", "--json")
    assert info["models"][0]["path"] == str(tmp_path / "moved" / "models" / "v1.onnx")
    ok("enroll", tmp_path / "moved" / "g.h5", "--images", models / "images")
    ok("search", tmp_path / "moved" / "g.h5", "--image", models / "images" / "digit0", "-k", "1")


def test_set_path_remembers_a_moved_file_and_refuses_another_model(models, tmp_path):
    store = tmp_path / "g.h5"
    shutil.copy(models / "v1.onnx", tmp_path / "v1.onnx")
    ok("init", store, "--model", tmp_path / "v1.onnx")
    ok("enroll", store, "--images", models / "images")
    (tmp_path / "v1.onnx").rename(tmp_path / "elsewhere.onnx")
    lost = run("search", store, "--image", models / "images" / "digit0", "-k", "1")
    assert lost.exit_code == 2 and "the file of model v1 is missing" in lost.stderr
    assert f"gallery model set-path {store} v1 PATH" in lost.stderr
    before = store_sha256(store)
    for args, message in ((("v1", models / "v2.onnx"), "is not model v1"),
                          (("v1", tmp_path / "nope.onnx"), "model file not found"),
                          (("v7", tmp_path / "elsewhere.onnx"), "unknown model version 'v7'")):
        refused = run("model", "set-path", store, *args)
        assert refused.exit_code == 2 and message in refused.stderr, refused.stderr
        assert refused.stderr.startswith("error:") and refused.stderr.count("\n") == 1
    assert store_sha256(store) == before
    done = ok("model", "set-path", store, "v1", tmp_path / "elsewhere.onnx", "--json")
    assert done["path"] == "elsewhere.onnx" and done["previous"] == str(tmp_path / "v1.onnx")
    ok("search", store, "--image", models / "images" / "digit0", "-k", "1")
    assert ok("history", store, "--json")[-1]["event"] == "model_path"


def _upgraded(models: Path, tmp_path: Path) -> Path:
    """v1 -> v2 upgraded store; both model files are copies in tmp_path (free to damage)."""
    store = tmp_path / "g.h5"
    for name in ("v1.onnx", "v2.onnx"):
        shutil.copy(models / name, tmp_path / name)
    ok("init", store, "--model", tmp_path / "v1.onnx")
    ok("enroll", store, "--images", models / "images")
    ok("check-compat", "--old", tmp_path / "v1.onnx", "--new", tmp_path / "v2.onnx", "--data", models / "eval",
       "--json", tmp_path / "r.json", "--max-new-drop", "1", "--impostor-pairs", "500")
    ok("upgrade", store, "--model", tmp_path / "v2.onnx", "--report", tmp_path / "r.json")
    return store


def _damage(path: Path, damage: str, other: Path) -> None:
    if damage == "missing":
        path.unlink()
    else:
        shutil.copy(other, path)


def _refused_one_line(result, damage: str) -> None:
    assert result.exit_code == 2 and result.stderr.startswith("error:") and result.stderr.count("\n") == 1, \
        result.stderr
    assert ("is missing" if damage == "missing" else "changed") in result.stderr
    assert "--allow-missing-model" in result.stderr


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_rollback_refuses_without_the_target_models_file(models, tmp_path, damage):
    store = _upgraded(models, tmp_path)
    _damage(tmp_path / "v1.onnx", damage, models / "v2.onnx")
    before = store_sha256(store)
    _refused_one_line(run("rollback", store), damage)
    assert store_sha256(store) == before
    back = ok("rollback", store, "--allow-missing-model", "--json")
    assert back["to"] == "v1"


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_upgrade_again_refuses_without_the_target_models_file(models, tmp_path, damage):
    """After a rollback, upgrading to the registered v2 again with its file gone (or another
    model in its place) is refused like a rollback; --allow-missing-model switches, embedding-only."""
    store = _upgraded(models, tmp_path)
    ok("rollback", store)
    _damage(tmp_path / "v2.onnx", damage, models / "v1.onnx")
    before = store_sha256(store)
    _refused_one_line(run("upgrade", store, "--model", tmp_path / "v2.onnx", "--report", tmp_path / "r.json"), damage)
    assert store_sha256(store) == before
    done = ok("upgrade", store, "--model", tmp_path / "v2.onnx", "--report", tmp_path / "r.json",
              "--allow-missing-model", "--json")
    assert done["to"] == "v2" and done["registered"] is False
    assert ("is missing" if damage == "missing" else "changed") in done["missing_model"]
    assert ok("info", store, "--json")["active_model"] == "v2"
    assert ok("history", store, "--json")[-1]["missing_model"] == done["missing_model"]
    # embedding queries still served; image queries name the missing file
    lost = run("search", store, "--image", models / "images" / "digit0", "-k", "1")
    assert lost.exit_code == 2 and "model v2" in lost.stderr and lost.stderr.count("\n") == 1
    # the real file back: upgrade's path check passes again and set-path is not needed
    shutil.copy(models / "v2.onnx", tmp_path / "v2.onnx")
    ok("search", store, "--image", models / "images" / "digit0", "-k", "1")


def test_upgrade_of_a_staged_model_checks_its_file_and_a_new_model_needs_one(models, tmp_path):
    store = tmp_path / "g.h5"
    for name in ("v1.onnx", "v2.onnx"):
        shutil.copy(models / name, tmp_path / name)
    ok("init", store, "--model", tmp_path / "v1.onnx")
    ok("check-compat", "--old", tmp_path / "v1.onnx", "--new", tmp_path / "v2.onnx", "--data", models / "eval",
       "--json", tmp_path / "r.json", "--max-new-drop", "1", "--impostor-pairs", "500")
    before = store_sha256(store)
    (tmp_path / "v2.onnx").rename(tmp_path / "v2-away.onnx")
    # not registered yet: its file is what registers it, the flag cannot stand in for it
    for extra in ((), ("--allow-missing-model",)):
        gone = run("upgrade", store, "--model", tmp_path / "v2.onnx", "--report", tmp_path / "r.json", *extra)
        assert gone.exit_code == 2 and "model file not found" in gone.stderr and gone.stderr.count("\n") == 1
    assert store_sha256(store) == before
    ok("upgrade", store, "--model", tmp_path / "v2-away.onnx", "--report", tmp_path / "r.json", "--stage")
    (tmp_path / "v2-away.onnx").unlink()
    staged = store_sha256(store)
    _refused_one_line(run("upgrade", store, "--model", tmp_path / "v2-away.onnx", "--report", tmp_path / "r.json"),
                      "missing")
    assert store_sha256(store) == staged
