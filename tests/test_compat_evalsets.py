"""insightface .bin, IJB-C meta and precomputed-embedding readers, on small files in the
exact formats written here, and the checker run over each against naive recomputation."""

import io
import os
import pickle

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cli.main import app
from gallery.compat.checker import CheckConfig, run_check
from gallery.compat.evalsets import aggregate_templates, read_bin
from gallery.errors import BadInput
from gallery.preprocess import PreprocessSpec, l2_normalize, to_tensor

SPEC = PreprocessSpec(8, 8, "GRAY", (127.5,), (127.5,))


class ProjectionEncoder:
    """A fixed random projection of the pixels: enough to make distinct, checkable embeddings."""

    def __init__(self, seed: int, dim: int = 6) -> None:
        self.spec, self.dim = SPEC, dim
        self.weight = np.random.default_rng(seed).normal(size=(64, dim)).astype(np.float32)
        self.identity = {"sha256": f"{seed:064d}", "model_id": f"proj-{seed}", "path": "", "format": "test",
                         "metadata": {}}

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1) @ self.weight


ENCODERS = {"old": ProjectionEncoder(0), "new": ProjectionEncoder(1)}


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8), dtype=np.uint8)


def _embed(encoder, images):
    return l2_normalize(encoder.embed(to_tensor(images[..., None], SPEC)))


# ----------------------------------------------------------------------------- .bin
def _write_bin(path, images, issame, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as handle:
        pickle.dump(([_png(i) for i in images], issame), handle, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_bin_roundtrip(tmp_path, protocol):
    images = _images(8)
    issame = np.array([True, False, True, False])  # numpy bools: needs the numpy reconstructors
    _write_bin(tmp_path / "lfw.bin", images, issame if protocol == 2 else issame.tolist(), protocol)
    blobs, flags = read_bin(tmp_path / "lfw.bin")
    assert flags.tolist() == issame.tolist()
    assert [np.asarray(Image.open(io.BytesIO(b))).tolist() for b in blobs] == images.tolist()


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bin_refuses_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([b"x", b"y"], [exploit])))
    with pytest.raises(BadInput, match="refusing"):
        read_bin(tmp_path / "evil.bin")
    assert not marker.exists()


def test_bin_bad_shapes(tmp_path):
    with open(tmp_path / "odd.bin", "wb") as handle:
        pickle.dump(([_png(i) for i in _images(3)], [True]), handle)
    with pytest.raises(BadInput, match="2 per pair"):
        read_bin(tmp_path / "odd.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(BadInput, match="not an insightface"):
        read_bin(tmp_path / "junk.bin")


def test_checker_on_bin_matches_sklearn(tmp_path):
    images = _images(200, seed=3)
    images[1::4] = np.clip(images[0::4].astype(int) + 10, 0, 255)  # genuine pairs look alike
    issame = np.zeros(100, bool)
    issame[::2] = True
    _write_bin(tmp_path / "set.bin", images, issame.tolist())
    result = run_check(CheckConfig(old="old", new="new", data=str(tmp_path / "set.bin"), target_far=0.1),
                       load=ENCODERS.__getitem__)
    old, new = _embed(ENCODERS["old"], images), _embed(ENCODERS["new"], images)
    cross = np.sum(new[0::2] * old[1::2], axis=1)
    ver = result.report["comparisons"]["new->old"]["verification"]
    assert ver["num_genuine"] == 50 and ver["num_impostor"] == 50
    assert ver["auc"] == pytest.approx(roc_auc_score(issame, cross), abs=1e-6)
    assert result.report["headline"]["metric"] == "tar@far=0.1"
    assert "identification" not in result.report["comparisons"]["old/old"]
    # the saved embeddings are a standalone evaluation set giving the same numbers
    saved = tmp_path / "saved.h5"
    run_check(CheckConfig(old="old", new="new", data=str(tmp_path / "set.bin"), target_far=0.1,
                          save_embeddings=str(saved)), load=ENCODERS.__getitem__)
    again = run_check(CheckConfig(embeddings=str(saved), target_far=0.1))
    assert again.report["comparisons"]["new->old"]["verification"]["auc"] == pytest.approx(ver["auc"])
    assert again.report["models"]["new"]["sha256"] == ENCODERS["new"].identity["sha256"]


# ----------------------------------------------------------------------------- IJB-C
def _write_ijbc(root, faces, pairs, gallery_csv=None, probe_csv=None):
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    lines = []
    for k, (template, media) in enumerate(faces):
        Image.fromarray(_images(1, seed=100 + k)[0]).save(root / "loose_crop" / f"{k}.jpg", quality=95)
        lines.append(f"{k}.jpg {template} {media}")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(lines) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    if gallery_csv:
        (root / "meta" / "ijbc_1N_gallery_G1.csv").write_text(gallery_csv)
        (root / "meta" / "ijbc_1N_probe_mixed.csv").write_text(probe_csv)


FACES = [(1, 10), (1, 10), (1, 11), (2, 20), (3, 30), (3, 31), (3, 31), (4, 40), (5, 50), (5, 51)]
PAIRS = [(1, 2, 1), (1, 3, 0), (2, 3, 1), (4, 5, 0), (1, 5, 0), (3, 4, 1)]


def naive_templates(features, faces):
    out = {}
    for template in sorted({t for t, _ in faces}):
        total = 0
        for media in sorted({m for t, m in faces if t == template}):
            rows = [features[k] / np.linalg.norm(features[k]) for k, (t, m) in enumerate(faces)
                    if t == template and m == media]
            total = total + np.mean(rows, axis=0)
        out[template] = total / np.linalg.norm(total)
    return out


def test_template_aggregation_matches_naive_loop():
    features = np.random.default_rng(0).normal(size=(len(FACES), 5))
    templates = np.array([t for t, _ in FACES])
    media = np.array([m for _, m in FACES])
    ids, agg = aggregate_templates(features, templates, media)
    expected = naive_templates(features, FACES)
    assert ids.tolist() == sorted(expected)
    for i, t in enumerate(ids):
        np.testing.assert_allclose(agg[i], expected[t], atol=1e-6)


def test_checker_on_ijbc(tmp_path):
    gallery_csv = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,100,a.jpg\n1,100,b.jpg\n4,200,c.jpg\n"
    probe_csv = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n2,100,d.jpg\n3,200,e.jpg\n5,300,f.jpg\n"
    _write_ijbc(tmp_path, FACES, PAIRS, gallery_csv, probe_csv)
    result = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34),
                       load=ENCODERS.__getitem__)
    images = np.stack([np.asarray(Image.open(tmp_path / "loose_crop" / f"{k}.jpg")) for k in range(len(FACES))])
    old = naive_templates(_embed(ENCODERS["old"], images), FACES)
    new = naive_templates(_embed(ENCODERS["new"], images), FACES)
    scores = [float(new[a] @ old[b]) for a, b, _ in PAIRS]
    labels = [c for _, _, c in PAIRS]
    ver = result.report["comparisons"]["new->old"]["verification"]
    assert ver["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    ident = result.report["comparisons"]["new->old"]["identification"]
    assert ident["num_mated"] == 2 and ident["num_nonmated"] == 1
    # brute force rank-1: probe template 2 (subject 100) and 3 (subject 200) vs gallery 1 and 4
    hits = [new[2] @ old[1] > new[2] @ old[4], new[3] @ old[4] > new[3] @ old[1]]
    assert ident["rank1"] == pytest.approx(np.mean(hits))
    assert result.report["data"]["kind"] == "ijbc" and result.report["data"]["num_templates"] == 5


def test_ijbc_from_precomputed_face_embeddings(tmp_path):
    _write_ijbc(tmp_path, FACES, PAIRS)
    with_models = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34,
                                        save_embeddings=str(tmp_path / "faces.h5")), load=ENCODERS.__getitem__)
    # features alone (no model files, e.g. private images) give the same numbers
    features_only = run_check(CheckConfig(data=str(tmp_path), embeddings=str(tmp_path / "faces.h5"),
                                          target_far=0.34))
    for key in ("old/old", "new->old"):
        assert (features_only.report["comparisons"][key]["verification"]
                == with_models.report["comparisons"][key]["verification"])
    assert features_only.report["data"]["embeddings"]["sha256"]
    with h5py.File(tmp_path / "short.h5", "w") as handle:
        handle["old"], handle["new"] = np.ones((3, 6)), np.ones((3, 6))
    with pytest.raises(BadInput, match="3 rows"):
        run_check(CheckConfig(data=str(tmp_path), embeddings=str(tmp_path / "short.h5")))


def _landmark_run(tmp_path, points):
    rows = [f"{k}.jpg " + " ".join(f"{v:.6f}" for v in points.ravel()) + " 0.9" for k in range(len(FACES))]
    (tmp_path / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(rows) + "\n")
    return run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34),
                     load=ENCODERS.__getitem__).report


def test_ijbc_landmarks_align_faces(tmp_path):
    from gallery.faces.align import template_for

    _write_ijbc(tmp_path, FACES, PAIRS)
    plain = run_check(CheckConfig(old="old", new="new", data=str(tmp_path), target_far=0.34),
                      load=ENCODERS.__getitem__).report
    # landmarks already on the template: the warp is the identity, scores are unchanged
    same = _landmark_run(tmp_path, template_for(8))
    shifted = _landmark_run(tmp_path, template_for(8) * 0.7 + 1.0)
    assert same["data"]["aligned"] is True and plain["data"]["aligned"] is False
    thresholds = [r["thresholds"][2]["threshold"] for r in (plain, same, shifted)]
    assert thresholds[1] == pytest.approx(thresholds[0], abs=1e-4)
    assert thresholds[2] != pytest.approx(thresholds[0], abs=1e-3)


@pytest.mark.parametrize("name, content, message", [
    ("ijbc_face_tid_mid.txt", "0.jpg 1\n", "expected 3 columns"),
    ("ijbc_template_pair_label.txt", "1 2 yes\n", "integers"),
    ("ijbc_template_pair_label.txt", "1 99 1\n", "template 99"),
])
def test_ijbc_wrong_files_exit_2(tmp_path, name, content, message):
    _write_ijbc(tmp_path, FACES, PAIRS)
    (tmp_path / "meta" / name).write_text(content)
    old = tmp_path / "x.onnx"
    result = CliRunner().invoke(app, ["check-compat", "--old", str(old), "--new", str(old), "--data", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output


def test_ijbc_csv_wrong_header(tmp_path):
    _write_ijbc(tmp_path, FACES, PAIRS, "TEMPLATE,SUBJECT\n1,100\n", "TEMPLATE_ID,SUBJECT_ID\n2,100\n")
    with pytest.raises(BadInput, match="TEMPLATE_ID and SUBJECT_ID"):
        run_check(CheckConfig(old="old", new="new", data=str(tmp_path)), load=ENCODERS.__getitem__)


# ----------------------------------------------------------------------------- HDF5 embeddings
def test_embeddings_with_fixed_pairs(tmp_path):
    rng = np.random.default_rng(1)
    old = rng.normal(size=(400, 8))
    new = old + 0.1 * rng.normal(size=old.shape)
    pairs = rng.integers(0, 400, size=(1000, 2))
    issame = rng.random(1000) < 0.3
    with h5py.File(tmp_path / "e.h5", "w") as handle:
        handle["old"], handle["new"], handle["pairs"], handle["issame"] = old, new, pairs, issame
        handle.attrs["old_sha256"] = "1" * 64
    result = run_check(CheckConfig(embeddings=str(tmp_path / "e.h5"), target_far=1e-2))
    on, oo = l2_normalize(new), l2_normalize(old)
    scores = np.sum(on[pairs[:, 0]] * oo[pairs[:, 1]], axis=1)
    ver = result.report["comparisons"]["new->old"]["verification"]
    assert ver["auc"] == pytest.approx(roc_auc_score(issame, scores), abs=1e-6)
    assert result.report["models"]["old"]["sha256"] == "1" * 64
    assert result.report["models"]["new"]["sha256"] is None
    assert result.report["protocol"]["fixed_pairs"] is True


def test_embeddings_bad_files(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as handle:
        handle["old"] = np.ones((5, 4))
        handle["labels"] = np.arange(5)
    with pytest.raises(BadInput, match="/new"):
        run_check(CheckConfig(embeddings=str(tmp_path / "e.h5")))
    with h5py.File(tmp_path / "d.h5", "w") as handle:
        handle["old"], handle["new"], handle["labels"] = np.ones((5, 4)), np.ones((5, 3)), np.arange(5)
    with pytest.raises(BadInput, match="not compatible by construction"):
        run_check(CheckConfig(embeddings=str(tmp_path / "d.h5")))
    with pytest.raises(BadInput, match="not found"):
        run_check(CheckConfig(embeddings=str(tmp_path / "missing.h5")))
