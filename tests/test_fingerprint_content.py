"""Dataset fingerprints see image bytes: a rewrite under the same names refuses the
old-feature cache and `--resume`, for image folders and RecordIO files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gallery.errors import BadInput
from gallery.imagefolder import list_image_folder
from gallery.preprocess import PreprocessSpec
from trainer.config import TrainConfig
from trainer.data import open_dataset
from trainer.data.recordio import RecordIODataset, read_index, write_recordio
from trainer.fit import fit
from trainer.methods import MethodContext
from trainer.old_features import resolve_old_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = PreprocessSpec(height=8, width=8, color_order="GRAY", mean=(128.0,), std=(64.0,))


def write_pgm(path: Path, pixels: np.ndarray) -> None:
    """Binary PGM: fixed-size header + raw bytes, so a rewrite keeps the file size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = pixels.shape
    path.write_bytes(f"P5\n{w} {h}\n255\n".encode() + pixels.astype(np.uint8).tobytes())


def write_folder(root: Path, seed: int, identities: int = 4, per: int = 5) -> None:
    rng = np.random.default_rng(seed)
    for c in range(identities):
        base = rng.integers(0, 256, (8, 8))
        for j in range(per):
            noise = rng.integers(-20, 21, (8, 8))
            write_pgm(root / f"id{c}" / f"{j}.pgm", np.clip(base + noise, 0, 255))


def rewrite_same_names(root: Path, seed: int) -> None:
    """New pixels under the same names, same sizes, original mtimes restored."""
    stats = {p: p.stat() for p in root.rglob("*.pgm")}
    write_folder(root, seed)
    for path, st in stats.items():
        assert path.stat().st_size == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def old_model(path: Path) -> None:
    """A tiny TorchScript old encoder with gallery metadata."""
    import json

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8)).eval()
    meta = {"preprocess": SPEC.to_dict(), "dim": 8, "model_id": "old"}
    torch.jit.save(torch.jit.script(net), str(path),
                   _extra_files={"gallery.json": json.dumps(meta)})


def test_folder_fingerprint_sees_bytes_and_matches_listing(tmp_path):
    root = tmp_path / "data"
    write_folder(root, seed=0)
    before = open_dataset(root, SPEC)
    # the decoder's one-read fingerprint equals the listing's own
    assert before.listing_fingerprint() == list_image_folder(root).fingerprint()
    rewrite_same_names(root, seed=1)
    after = open_dataset(root, SPEC)
    assert not np.array_equal(before.images, after.images)
    assert after.listing_fingerprint() != before.listing_fingerprint()


def test_rewritten_images_refuse_the_old_feature_cache(tmp_path):
    root, old = tmp_path / "data", tmp_path / "old.ts"
    write_folder(root, seed=0)
    old_model(old)

    def resolve():
        dataset = open_dataset(root, SPEC)
        context = MethodContext(dataset=dataset, num_classes=dataset.num_classes,
                                embedding_dim=8, device=torch.device("cpu"), head=None,
                                old_model=str(old), cache_dir=tmp_path / "cache")
        return dataset, resolve_old_features(context)

    _, first = resolve()
    assert first.source == "extracted"
    assert resolve()[1].source == "cache"
    rewrite_same_names(root, seed=1)
    dataset, second = resolve()
    assert second.source == "extracted"
    # the fresh features are the old model on the new pixels (independent reference)
    net = torch.jit.load(str(old))
    with torch.no_grad():
        pixels = (torch.from_numpy(dataset.images).float().permute(0, 3, 1, 2) - 128) / 64
        np.testing.assert_allclose(second.features, net(pixels).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(first.features, second.features)


def test_rewritten_images_refuse_resume(tmp_path):
    root = tmp_path / "data"
    write_folder(root, seed=0, identities=4, per=8)
    cfg = dict(data=str(root), out=str(tmp_path / "m.pt"), arch="small", head="softmax",
               dim=8, image_size=8, color_order="GRAY", mean=128.0, std=64.0, epochs=2,
               batch_size=8, lr=0.01, device="cpu")
    fit(TrainConfig(**cfg, stop_after=1))
    rewrite_same_names(root, seed=2)
    with pytest.raises(BadInput, match="dataset changed"):
        fit(TrainConfig(**cfg, resume=True))


def test_recordio_fingerprint_sees_record_bytes(tmp_path):
    from PIL import Image
    import io

    def encoded(value: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(out, format="BMP")
        return out.getvalue()  # BMP: same size for every value

    rec = tmp_path / "t.rec"
    write_recordio(rec, [(float(i % 2), encoded(10 * i)) for i in range(6)])
    before = RecordIODataset(rec, SPEC).listing_fingerprint()
    raw = bytearray(rec.read_bytes())
    _, offsets = read_index(rec.with_suffix(".idx"))
    st = rec.stat()
    first, second = encoded(10 * 3), encoded(200)
    start = raw.index(first, int(offsets[3]))
    raw[start:start + len(first)] = second  # one image rewritten in place, same length
    rec.write_bytes(bytes(raw))
    os.utime(rec, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert rec.stat().st_size == st.st_size
    data = RecordIODataset(rec, SPEC)
    assert data.images_uint8([3])[0, 0, 0, 0] == 200
    assert data.listing_fingerprint() != before
