"""Incremental, per-item enrolment and image search (issue 16, item 4): `--skip-existing`
checked before any encoding, `--on-error skip|fail` with a per-item report, item errors for
image searches; a refused enrolment leaves the store byte-identical."""

from __future__ import annotations

import shutil

import pytest

from cli_helpers import ok, run, store_sha256
from gallery.store import Store

pytest.importorskip("torch")
from tiny_models import make_onnx_encoder, write_digit_folder  # noqa: E402


@pytest.fixture
def setup(tmp_path):
    make_onnx_encoder(tmp_path / "enc.onnx", seed=0)
    write_digit_folder(tmp_path / "photos", n_per_class=2, seed=0)
    (tmp_path / "s").mkdir()
    store = tmp_path / "s" / "g.h5"
    ok("init", store, "--model", tmp_path / "enc.onnx")
    return tmp_path, store


def test_skip_existing_enrols_only_new_items_and_checks_before_encoding(setup):
    root, store = setup
    assert ok("enroll", store, "--images", root / "photos", "--json")["rows"] == 20
    new = root / "photos" / "digit3" / "new.png"
    shutil.copy(root / "photos" / "digit3" / sorted((root / "photos" / "digit3").iterdir())[0].name, root / "same.png")
    write_digit_folder(root / "extra", n_per_class=1, seed=5)
    shutil.copy(sorted((root / "extra" / "digit3").iterdir())[0], new)
    shutil.copy(root / "same.png", root / "photos" / "digit3" / "copy-of-first.png")  # same bytes, new id
    before = store_sha256(store)
    # without --skip-existing: refused before the model is even loaded (its file is gone: no error about it)
    (root / "enc.onnx").rename(root / "moved.onnx")
    refused = run("enroll", store, "--images", root / "photos")
    assert refused.exit_code == 2 and "ids already in store" in refused.stderr and "--skip-existing" in refused.stderr
    assert store_sha256(store) == before
    report = ok("enroll", store, "--images", root / "photos", "--skip-existing", "--model", root / "moved.onnx",
                "--json")
    assert report["rows"] == 1 and report["errors"] == []
    reasons = {s["item"]: s["reason"] for s in report["skipped_existing"]}
    assert len(reasons) == 21 and reasons["digit3/copy-of-first.png"] == "same file enrolled"
    with Store.open(store) as st:
        assert "digit3/new.png" in st.find_ids(["digit3/new.png"]) and st.count() == 21
    again = ok("enroll", store, "--images", root / "photos", "--skip-existing", "--json")  # nothing new
    assert again["rows"] == 0 and len(again["skipped_existing"]) == 22


def test_on_error_skip_reports_each_bad_item_fail_writes_nothing(setup):
    root, store = setup
    (root / "photos" / "digit1" / "broken.png").write_text("not a png")
    (root / "photos" / "digit2" / "empty.jpg").write_bytes(b"")
    before = store_sha256(store)
    failed = run("enroll", store, "--images", root / "photos")  # default --on-error fail
    assert failed.exit_code == 2 and "not a readable image" in failed.stderr
    assert store_sha256(store) == before
    report = ok("enroll", store, "--images", root / "photos", "--on-error", "skip", "--json")
    assert report["rows"] == 20
    assert sorted(e["item"] for e in report["errors"]) == ["digit1/broken.png", "digit2/empty.jpg"]
    assert all("not a readable image" in e["error"] for e in report["errors"])
    human = run("enroll", store, "--images", root / "photos", "--skip-existing", "--on-error", "skip")
    assert human.exit_code == 0 and "skipped: digit1/broken.png" in human.stderr
    bad = run("enroll", store, "--images", root / "photos", "--on-error", "maybe")
    assert bad.exit_code == 2 and "--on-error must be one of fail, skip" in bad.stderr


def test_image_search_gives_an_item_error_per_bad_query(setup):
    root, store = setup
    ok("enroll", store, "--images", root / "photos")
    (root / "q").mkdir()
    good = sorted((root / "photos" / "digit4").iterdir())[0]
    shutil.copy(good, root / "q" / "a.png")
    (root / "q" / "b.png").write_text("nope")
    records = ok("search", store, "--image", root / "q", "-k", "1", "--accept-uncalibrated", "--json")
    by_name = {r["query"].rsplit("/", 1)[-1]: r for r in records}
    assert by_name["a.png"]["match"] == "digit4" and "error" not in by_name["a.png"]
    assert "not a readable image" in by_name["b.png"]["error"] and by_name["b.png"]["hits"] == []
    strict = run("search", store, "--image", root / "q", "--on-error", "fail")
    assert strict.exit_code == 2 and "b.png" in strict.stderr
