"""YuNet wrapper and face-crop hook: bad input and no-face photos fail with one clear line."""

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
