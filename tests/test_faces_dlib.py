"""dlib/face_recognition galleries -> store v1: every format reads to the same rows."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.faces.dlib import DLIB_MODEL_ID, import_dlib, read_dlib_encodings
from gallery.store.core import Store


def _gallery(n: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    # dlib encodings are small signed values with norm near 0.4-0.5; scale does not matter here
    enc = rng.normal(0, 0.05, (n, 128)).astype(np.float32)
    ids = [f"face{i:03d}" for i in range(n)]
    labels = [["obama", "biden", "harris"][i % 3] for i in range(n)]
    return enc, ids, labels


def _write_all(tmp_path, enc, ids, labels):
    np.save(tmp_path / "enc.npy", enc)
    (tmp_path / "ids.csv").write_text("id,label\n" + "".join(f"{i},{l}\n" for i, l in zip(ids, labels)))
    header = "id,label," + ",".join(f"e{j}" for j in range(128)) + "\n"
    rows = "".join(f"{i},{l}," + ",".join(repr(float(v)) for v in e) + "\n"
                   for i, l, e in zip(ids, labels, enc))
    (tmp_path / "enc.csv").write_text(header + rows)
    with h5py.File(tmp_path / "enc.h5", "w") as h5:
        h5["encodings"] = enc
        h5["ids"] = np.array(ids, dtype=h5py.string_dtype())
        h5["labels"] = np.array(labels, dtype=h5py.string_dtype())


@pytest.mark.parametrize("name", ["enc.npy", "enc.csv", "enc.h5"])
def test_formats_read_identically(tmp_path, name) -> None:
    enc, ids, labels = _gallery()
    _write_all(tmp_path, enc, ids, labels)
    got, got_ids, got_labels = read_dlib_encodings(tmp_path / name,
                                                   tmp_path / "ids.csv" if name.endswith(".npy") else None)
    np.testing.assert_array_equal(got, enc)
    assert got_ids == ids and got_labels == labels


def test_import_creates_store_v1_and_search_finds_each_row(tmp_path) -> None:
    enc, ids, labels = _gallery(30, seed=1)
    _write_all(tmp_path, enc, ids, labels)
    summary = import_dlib(tmp_path / "enc.h5", tmp_path / "g.h5")
    assert summary == {"store": str(tmp_path / "g.h5"), "version": "dlib-v1", "model_id": DLIB_MODEL_ID,
                       "items": 30, "identities": 3, "dim": 128}
    with Store.open(tmp_path / "g.h5") as store:
        model = store.model()
        assert (model.version, model.model_id, model.sha256, model.dim) == ("dlib-v1", DLIB_MODEL_ID, None, 128)
        assert model.metadata["gallery.arch"] == "dlib_face_recognition_resnet_model_v1"
        cols = store.columns()
        assert cols["id"].tolist() == ids and cols["identity"].tolist() == labels
        stored = store.embeddings()
    # Reference: the stored rows are the L2-normalised encodings, so each encoding's
    # nearest stored row by brute-force cosine is itself.
    unit = enc / np.linalg.norm(enc, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, unit, atol=1e-6)
    assert (np.argmax(unit @ stored.T, axis=1) == np.arange(30)).all()


def test_cli_import_dlib(tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    enc, ids, labels = _gallery()
    _write_all(tmp_path, enc, ids, labels)
    args = ["import-dlib", str(tmp_path / "enc.npy"), "--ids", str(tmp_path / "ids.csv"),
            "--store", str(tmp_path / "g.h5"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["items"] == 12
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def _bad_cases(tmp_path):
    enc, ids, labels = _gallery()
    _write_all(tmp_path, enc, ids, labels)
    np.save(tmp_path / "wide.npy", np.zeros((3, 64), np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    nan = enc.copy()
    nan[4, 7] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    (tmp_path / "short.csv").write_text("id,label\na,b\n")
    (tmp_path / "g.pkl").write_bytes(b"\x80\x04")
    with h5py.File(tmp_path / "noids.h5", "w") as h5:
        h5["encodings"] = enc
    return {
        "wide.npy": ("shape (3, 64)", "ids.csv"),
        "obj.npy": ("not a plain numeric", "ids.csv"),
        "nan.npy": ("row 4 contains NaN", "ids.csv"),
        "enc.npy": ("pass --ids", None),
        "short.csv": ("shape (1, 0)", None),
        "g.pkl": ("pickles are refused", None),
        "noids.h5": ("missing dataset", None),
    }


def test_bad_input_raises_and_creates_no_store(tmp_path) -> None:
    for name, (needle, ids) in _bad_cases(tmp_path).items():
        with pytest.raises(BadInput, match=re.escape(needle)):
            import_dlib(tmp_path / name, tmp_path / "g.h5", ids=tmp_path / ids if ids else None)
        assert not (tmp_path / "g.h5").exists(), name


def test_failed_first_enrol_leaves_no_store(tmp_path, monkeypatch) -> None:
    """The store is filled under a temporary name before it appears: an enrol that fails
    leaves neither the store nor its build directory."""
    enc, ids, labels = _gallery(10, seed=2)
    _write_all(tmp_path, enc, ids, labels)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Store, "enroll", full_disk)
    with pytest.raises(OSError, match="No space"):
        import_dlib(tmp_path / "enc.h5", tmp_path / "g.h5")
    assert not (tmp_path / "g.h5").exists()
    assert not list(tmp_path.glob(".g.h5.*")), list(tmp_path.iterdir())


def test_mismatched_ids_rejected(tmp_path) -> None:
    enc, ids, labels = _gallery()
    _write_all(tmp_path, enc, ids, labels)
    (tmp_path / "few.csv").write_text("id,label\na,b\n")
    with pytest.raises(BadInput, match="12 encodings but 1 ids"):
        read_dlib_encodings(tmp_path / "enc.npy", tmp_path / "few.csv")
