"""Old-feature extraction (ONNX old model), the fingerprint-keyed cache, --old-features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gallery.errors import BadInput
from gallery.preprocess import PreprocessSpec, to_tensor
from trainer.data.base import ArrayDataset
from trainer.methods import METHODS, MethodContext, load_all
from trainer.old_features import read_old_features, resolve_old_features, write_old_features

load_all()
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # legacy ONNX exporter
SPEC = PreprocessSpec(height=8, width=8, color_order="GRAY", mean=(8.0,), std=(4.0,))
DIM = 8


def export_onnx(path: Path, seed: int, model_id: str | None = "old-v1") -> nn.Module:
    """A tiny conv encoder exported to ONNX with gallery.* preprocessing metadata."""
    import onnx

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, DIM)).eval()
    torch.onnx.export(net, (torch.zeros(2, 1, 8, 8),), str(path), input_names=["input"],
                      output_names=["embedding"], dynamo=False,
                      dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}})
    model = onnx.load(str(path))
    meta = {**SPEC.to_metadata(), "gallery.dim": str(DIM)}
    if model_id:
        meta["gallery.model_id"] = model_id
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return net


@pytest.fixture(scope="module")
def digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images[:200] * 15).astype(np.uint8)[..., None]  # 0..16 -> 0..240, HxWx1
    return ArrayDataset(images, d.target[:200], [str(i) for i in range(10)], SPEC,
                        source="digits", fingerprint="digits-200")


def context(dataset, tmp_path, old=None, feats=None, dim=DIM) -> MethodContext:
    return MethodContext(dataset=dataset, num_classes=dataset.num_classes, embedding_dim=dim,
                         device=torch.device("cpu"), head=nn.Identity(), old_model=old,
                         old_features=feats, cache_dir=tmp_path / "cache")


def test_extraction_matches_torch_and_is_cached(digits, tmp_path):
    old = tmp_path / "old.onnx"
    net = export_onnx(old, seed=0)
    done = []
    first = resolve_old_features(context(digits, tmp_path, old=str(old)), progress=done.append)
    assert first.source == "extracted" and sum(done) == len(digits)
    with torch.no_grad():  # independent reference: the torch net on the same tensors
        expected = net(torch.from_numpy(to_tensor(digits.images, SPEC))).numpy()
    np.testing.assert_allclose(first.features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(first.labels, digits.labels)
    second = resolve_old_features(context(digits, tmp_path, old=str(old)))
    assert second.source == "cache"
    np.testing.assert_array_equal(second.features, first.features)


def test_stale_cache_is_never_reused(digits, tmp_path):
    old = tmp_path / "old.onnx"
    export_onnx(old, seed=0)
    a = resolve_old_features(context(digits, tmp_path, old=str(old)))
    export_onnx(old, seed=1)  # same path, retrained weights -> new sha256
    b = resolve_old_features(context(digits, tmp_path, old=str(old)))
    assert b.source == "extracted" and not np.allclose(a.features, b.features)
    edited = ArrayDataset(digits.images[:150], digits.labels[:150], digits.classes, SPEC,
                          source="digits", fingerprint="digits-150")
    c = resolve_old_features(context(edited, tmp_path, old=str(old)))
    assert c.source == "extracted" and len(c.features) == 150
    # a corrupt cache file is rebuilt rather than trusted
    for path in (tmp_path / "cache").glob("*.h5"):
        path.write_bytes(b"not hdf5")
    assert resolve_old_features(context(edited, tmp_path, old=str(old))).source == "extracted"


def test_old_features_file(digits, tmp_path):
    old, other = tmp_path / "old.onnx", tmp_path / "other.onnx"
    export_onnx(old, seed=0)
    export_onnx(other, seed=3)
    data = resolve_old_features(context(digits, tmp_path, old=str(old)))
    path = tmp_path / "feats.h5"
    write_old_features(path, data)
    loaded = resolve_old_features(context(digits, tmp_path, feats=str(path)))
    assert loaded.source == "file" and loaded.old_model["model_id"] == "old-v1"
    np.testing.assert_array_equal(loaded.features, data.features)
    with pytest.raises(BadInput, match="another old model"):
        resolve_old_features(context(digits, tmp_path, old=str(other), feats=str(path)))
    edited = ArrayDataset(digits.images[:150], digits.labels[:150], digits.classes, SPEC,
                          source="digits", fingerprint="digits-150")
    with pytest.raises(BadInput, match="different dataset"):
        resolve_old_features(context(edited, tmp_path, feats=str(path)))
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(BadInput):
        read_old_features(tmp_path / "junk.h5")
    with pytest.raises(BadInput, match="needs the old model"):
        resolve_old_features(context(digits, tmp_path))


@pytest.mark.parametrize("name", ["l2", "bct", "mixbct"])
def test_prepare_and_describe(digits, tmp_path, name):
    old = tmp_path / "old.onnx"
    export_onnx(old, seed=0, model_id=None)  # no model_id: compatible_with = file sha256
    from gallery.fingerprint import file_sha256

    method = METHODS.get(name)()
    method.prepare(context(digits, tmp_path, old=str(old)))
    assert method.old_features.shape == (len(digits), DIM)
    assert method.describe()["compatible_with"] == file_sha256(old)
    with pytest.raises(BadInput, match="dim"):
        METHODS.get(name)().prepare(context(digits, tmp_path, old=str(old), dim=16))


def test_torchscript_old_model(digits, tmp_path):
    import json

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, DIM)).eval()
    path = tmp_path / "old.ts"
    meta = {"preprocess": SPEC.to_dict(), "dim": DIM, "model_id": "ts-old"}
    torch.jit.save(torch.jit.script(net), str(path), _extra_files={"gallery.json": json.dumps(meta)})
    data = resolve_old_features(context(digits, tmp_path, old=str(path)))
    with torch.no_grad():
        expected = net(torch.from_numpy(to_tensor(digits.images, SPEC))).numpy()
    np.testing.assert_allclose(data.features, expected, rtol=1e-4, atol=1e-5)
    assert data.old_model["model_id"] == "ts-old" and data.old_model["format"] == "torchscript"
