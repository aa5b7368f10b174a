"""YuNet wrapper and face-crop hook: bad input and no-face photos fail with one clear line; a
model declaring aligned faces detects by default in every command that embeds images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gallery.errors import BadInput
from gallery.faces import assets
from gallery.faces.align import ARCFACE_TEMPLATE, apply_transform
from gallery.faces.crop import FaceCropper
from gallery.faces.detect import YUNET_ENV, resolve_detector_path
from gallery.preprocess import PreprocessSpec
from gallery.store import Store


def test_detector_path_is_never_guessed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(YUNET_ENV, raising=False)
    with pytest.raises(BadInput, match="pass --detector or set"):
        resolve_detector_path(None)
    with pytest.raises(BadInput, match="YuNet model not found"):
        resolve_detector_path(tmp_path / "nope.onnx")
    (tmp_path / "y.onnx").write_bytes(b"x")
    monkeypatch.setenv(YUNET_ENV, str(tmp_path / "y.onnx"))
    assert resolve_detector_path(None) == tmp_path / "y.onnx"


def test_cropper_with_landmarks_only(tmp_path) -> None:
    """Landmarks given for one photo: it is aligned; another photo has none -> clear error."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    points = apply_transform(np.array([[1.5, 0, 40], [0, 1.5, 30]]), ARCFACE_TEMPLATE)
    spec = PreprocessSpec(color_order="BGR")
    cropper = FaceCropper(spec, landmarks={"a.png": points})
    crop = cropper.crop(tmp_path / "a.png")
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    # colour order: the crop is the RGB warp reversed (BGR encoder)
    rgb = FaceCropper(PreprocessSpec(), landmarks={"a.png": points}).crop(tmp_path / "a.png")
    np.testing.assert_array_equal(crop, rgb[:, :, ::-1])
    with pytest.raises(BadInput, match="no landmarks given for b.png"):
        cropper.crop(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(BadInput, match="not a readable image"):
        FaceCropper(spec, landmarks={"c.png": points}).crop(tmp_path / "c.png")


def test_cropper_rejects_non_square_and_missing_source() -> None:
    with pytest.raises(BadInput, match="square"):
        FaceCropper(PreprocessSpec(height=112, width=96), landmarks={})
    with pytest.raises(BadInput, match="detector or a landmarks file"):
        FaceCropper(PreprocessSpec())


def test_yunet_finds_no_face_in_noise_and_says_which_photo(tmp_path) -> None:
    pytest.importorskip("cv2", reason="OpenCV missing: pip install 'gallery[faces]'")
    found, missing = assets.locate()
    if missing:
        pytest.skip(f"face assets missing (run setup.sh): {missing[0]}")
    from gallery.faces.detect import YuNetDetector

    detector = YuNetDetector(found["yunet"])
    noise = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    Image.fromarray(noise).save(tmp_path / "noise.jpg")
    with pytest.raises(BadInput, match="no face detected in .*noise.jpg"):
        FaceCropper(PreprocessSpec(), detector).crop(tmp_path / "noise.jpg")
    with pytest.raises(BadInput, match="HxWx3 uint8"):
        detector.detect(noise.astype(np.float32))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BadInput, match="cannot load YuNet model"):
        YuNetDetector(bad)


def test_a_model_declaring_aligned_faces_detects_by_default_in_every_command(tmp_path, monkeypatch) -> None:
    """Issue 16, item 3: enroll, search, check-compat, threshold calibrate, shadow and backfill
    detect + align by default when the model declares aligned face input (here: no YuNet
    model anywhere, so each says it needs one, and a refused write leaves the store
    byte-identical); --no-detect opts out and each runs on the plain images."""
    pytest.importorskip("torch")
    import onnx

    from cli_helpers import ok, run, store_sha256
    from tiny_models import make_onnx_encoder, write_digit_folder

    monkeypatch.delenv(YUNET_ENV, raising=False)
    for seed in (1, 2):
        path = tmp_path / f"f{seed}.onnx"
        make_onnx_encoder(path, seed=seed)
        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = "gallery.alignment", "arcface-5pt"
        onnx.save(model, str(path))
    write_digit_folder(tmp_path / "photos", n_per_class=3, seed=0)
    store, photos, report = tmp_path / "g", tmp_path / "photos", tmp_path / "r.json"
    ok("init", store, "--model", tmp_path / "f1.onnx")
    compat = ["check-compat", "--old", tmp_path / "f1.onnx", "--new", tmp_path / "f2.onnx", "--data", photos,
              "--out", report, "--max-new-drop", "1", "--impostor-pairs", "200"]
    steps = [("enroll", store, "--images", photos), ("search", store, "--image", photos, "--on-error", "fail"),
             tuple(compat), ("threshold", "calibrate", store, "--data", photos, "--impostor-pairs", "200"),
             ("upgrade", store, "--model", tmp_path / "f2.onnx", "--report", report, "--stage"),
             ("shadow", store, "--queries", photos),
             ("upgrade", store, "--model", tmp_path / "f2.onnx", "--report", report),
             ("backfill", store, "--images", photos)]
    for step in steps:
        if step[0] == "upgrade":
            ok(*step)
            continue
        before = store_sha256(store)
        refused = run(*step)
        assert refused.exit_code == 2, (step[0], refused.output)
        assert "face detection needs a YuNet ONNX model" in refused.stderr and "--no-detect" in refused.stderr
        assert store_sha256(store) == before, step[0]
        ok(*step, "--no-detect")
    with Store.open(store) as st:
        assert st.active_model == "v2" and set(st.columns()["model"]) == {"v2"}  # backfilled without detection
