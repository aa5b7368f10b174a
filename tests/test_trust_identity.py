"""A model's identity covers its ONNX external data (gallery/model_identity.py).

Regression for issue 15: replacing an ONNX model's external weights file made an
enrolled image score 0.019 against its own row while `verify` still said OK, because
the identity was the .onnx file's sha256 alone.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.model_identity import external_locations, model_sha256

sys.path.insert(0, str(Path(__file__).parent))
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx.external_data_helper import _get_all_tensors, uses_external_data  # noqa: E402

from cli_helpers import run, store_sha256  # noqa: E402
from tiny_models import make_onnx_encoder, write_digit_folder  # noqa: E402


def _external(folder: Path, seed: int = 0, locations: tuple[str, ...] = ("w.bin",)) -> Path:
    """A tiny encoder whose weights live in external data files (one per location, round-robin)."""
    folder.mkdir(parents=True, exist_ok=True)
    make_onnx_encoder(folder / "plain.onnx", seed=seed)
    model = onnx.load(str(folder / "plain.onnx"))
    tensors = [t for t in model.graph.initializer if t.HasField("raw_data") or t.float_data]
    for i, tensor in enumerate(tensors):
        onnx.external_data_helper.set_external_data(tensor, locations[i % len(locations)])
    for location in locations:
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "m.onnx"))  # writes each tensor's raw_data to its location
    return folder / "m.onnx"


def _reference_locations(path: Path) -> list[str]:
    """onnx's own walk over every tensor (graph, attributes, subgraphs): the independent reference."""
    model = onnx.load(str(path), load_external_data=False)
    found = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            found.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(found)


def test_locations_match_onnx_helper(tmp_path):
    path = _external(tmp_path / "a", locations=("w1.bin", "sub/w0.bin"))
    assert external_locations(path.read_bytes()) == _reference_locations(path) == ["sub/w0.bin", "w1.bin"]
    plain = tmp_path / "a" / "plain.onnx"
    assert external_locations(plain.read_bytes()) == _reference_locations(plain) == []


def test_identity_is_file_sha256_without_external_data(tmp_path):
    make_onnx_encoder(tmp_path / "p.onnx")
    assert model_sha256(tmp_path / "p.onnx") == file_sha256(tmp_path / "p.onnx")


def test_identity_covers_external_files_in_sorted_order(tmp_path):
    path = _external(tmp_path / "b", locations=("w1.bin", "sub/w0.bin"))
    expected = hashlib.sha256(f"gallery.onnx-external/1\n{file_sha256(path)}\n".encode())
    for location in ("sub/w0.bin", "w1.bin"):  # code-point order, computed by hand
        expected.update(location.encode() + b"\0" + file_sha256(path.parent / location).encode() + b"\n")
    assert model_sha256(path) == expected.hexdigest() != file_sha256(path)
    before = model_sha256(path)
    weights = path.parent / "w1.bin"
    data = bytearray(weights.read_bytes())
    data[0] ^= 1
    weights.write_bytes(bytes(data))
    assert model_sha256(path) != before


@pytest.mark.parametrize("location, message", [("/etc/passwd", "not a plain relative path"),
                                               ("../w.bin", "not a plain relative path"),
                                               ("gone.bin", "not found")])
def test_bad_locations_are_refused(tmp_path, location, message):
    path = _external(tmp_path / "c")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    (tmp_path / "c" / "bad.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(BadInput, match=message):
        model_sha256(tmp_path / "c" / "bad.onnx")


def test_symlinked_external_data_is_refused(tmp_path):
    path = _external(tmp_path / "d")
    real = tmp_path / "elsewhere.bin"
    (path.parent / "w.bin").rename(real)
    (path.parent / "w.bin").symlink_to(real)
    with pytest.raises(BadInput, match="symlink"):
        model_sha256(path)


def test_swapped_external_weights_are_refused_by_the_store(tmp_path):
    """The issue's case: same .onnx, other weights file -> a different model, refused."""
    path = _external(tmp_path / "m", seed=0)
    other = _external(tmp_path / "o", seed=1)
    write_digit_folder(tmp_path / "imgs", n_per_class=1)
    store = tmp_path / "g.h5"
    assert run("init", store, "--model", path).exit_code == 0
    assert run("enroll", store, "--images", tmp_path / "imgs").exit_code == 0
    onnx_bytes = file_sha256(path)
    (path.parent / "w.bin").write_bytes((other.parent / "w.bin").read_bytes())  # same sizes, other weights
    assert file_sha256(path) == onnx_bytes  # the .onnx itself is untouched
    before = store_sha256(store)
    write_digit_folder(tmp_path / "more", n_per_class=1, seed=5)
    for folder in sorted((tmp_path / "more").iterdir()):  # new ids: the identity check must refuse
        folder.rename(folder.with_name("new-" + folder.name))
    result = run("enroll", store, "--images", tmp_path / "more")
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is not model v1" in lines[0]
    assert store_sha256(store) == before
    result = run("search", store, "--image", tmp_path / "imgs" / "digit0")
    assert result.exit_code == 2 and "is not model v1" in result.stderr


def test_external_model_roundtrip_still_works(tmp_path):
    """An unmodified external-data model enrols and finds its own rows (the identity is stable)."""
    path = _external(tmp_path / "e")
    write_digit_folder(tmp_path / "imgs", n_per_class=1)
    store = tmp_path / "g.h5"
    assert run("init", store, "--model", path).exit_code == 0
    assert run("enroll", store, "--images", tmp_path / "imgs").exit_code == 0
    from gallery.store import Store

    with Store.open(store) as st:
        assert st.model().sha256 == model_sha256(path)
    result = run("search", store, "--image", tmp_path / "imgs" / "digit3", "--json", "-k", "1")
    assert result.exit_code == 0, result.stderr
    assert np.isclose(__import__("json").loads(result.stdout)[0]["hits"][0]["score"], 1.0, atol=1e-4)
