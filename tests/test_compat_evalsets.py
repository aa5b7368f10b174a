"""insightface .bin and precomputed-embedding readers (IJB-C: test_compat_ijbc.py), on small
files in the exact formats written here, and the checker over each against naive recomputation."""

import io
import os
import pickle

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from compat_helpers import ENCODERS, embed_units, png_bytes, random_images
from gallery.compat.checker import CheckConfig, run_check
from gallery.compat.evalsets import read_bin
from gallery.errors import BadInput
from gallery.preprocess import l2_normalize


# ----------------------------------------------------------------------------- .bin
def _write_bin(path, images, issame, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as handle:
        pickle.dump(([png_bytes(i) for i in images], issame), handle, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_bin_roundtrip(tmp_path, protocol):
    images = random_images(8)
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
        pickle.dump(([png_bytes(i) for i in random_images(3)], [True]), handle)
    with pytest.raises(BadInput, match="2 per pair"):
        read_bin(tmp_path / "odd.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    with pytest.raises(BadInput, match="not an insightface"):
        read_bin(tmp_path / "junk.bin")


def test_checker_on_bin_matches_sklearn(tmp_path):
    images = random_images(200, seed=3)
    images[1::4] = np.clip(images[0::4].astype(int) + 10, 0, 255)  # genuine pairs look alike
    issame = np.zeros(100, bool)
    issame[::2] = True
    _write_bin(tmp_path / "set.bin", images, issame.tolist())
    result = run_check(CheckConfig(old="old", new="new", data=str(tmp_path / "set.bin"), target_far=0.1),
                       load=ENCODERS.__getitem__)
    old, new = embed_units(ENCODERS["old"], images), embed_units(ENCODERS["new"], images)
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
