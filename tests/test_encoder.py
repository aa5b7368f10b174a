"""ONNX encoder runtime: metadata-driven preprocessing, parity with torch, clear errors.

`make_onnx_encoder` and `write_digit_folder` are also used by the store CLI tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.preprocess import PreprocessSpec, load_image

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


class TinyNet(torch.nn.Module):
    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8 * 4 * 4, dim)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(x.flatten(1))


def make_onnx_encoder(path: Path, dim: int = 16, size: int = 32, color: str = "RGB",
                      seed: int = 0, fixed_batch: int | None = None, metadata: bool = True):
    """Export a tiny conv net to ONNX with gallery.* metadata; returns (torch net, spec)."""
    torch.manual_seed(seed)
    channels = 1 if color == "GRAY" else 3
    net = TinyNet(channels, dim).eval()
    spec = PreprocessSpec(height=size, width=size, color_order=color,
                          mean=(127.5,) * channels, std=(127.5,) * channels)
    dummy = torch.zeros(fixed_batch or 2, channels, size, size)
    dynamic = None if fixed_batch else {"x": {0: "n"}, "e": {0: "n"}}
    torch.onnx.export(net, (dummy,), str(path), input_names=["x"], output_names=["e"],
                      dynamic_axes=dynamic, dynamo=False)
    if metadata:
        model = onnx.load(str(path))
        meta = {**spec.to_metadata(), "gallery.dim": str(dim), "gallery.model_id": f"tiny-{seed}"}
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(path))
    return net, spec


def digit_images(n_per_class: int = 6, size: int = 32, seed: int = 0):
    """Real images: sklearn digits scaled to uint8 and upsampled; returns (images, labels)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(10):
        rows = rng.choice(np.flatnonzero(digits.target == label), n_per_class, replace=False)
        for r in rows:
            pixels = (digits.images[r] * (255 / 16)).astype(np.uint8)
            images.append(np.asarray(Image.fromarray(pixels).resize((size, size), Image.NEAREST)))
            labels.append(label)
    return np.stack(images), np.array(labels)


def write_digit_folder(root: Path, n_per_class: int = 6, seed: int = 0) -> list[Path]:
    """ROOT/digit<k>/<i>.png from real digits; returns the written paths."""
    from PIL import Image

    images, labels = digit_images(n_per_class, seed=seed)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"{i:04d}.png")
        Image.fromarray(img).convert("RGB").save(paths[-1])
    return paths


def _reference(net, images_rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Independent preprocessing in plain numpy, then the torch net."""
    x = images_rgb.astype(np.float64)
    if spec.color_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.array(spec.mean)) / np.array(spec.std)
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()


@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_onnx_matches_torch_on_real_images(tmp_path, color):
    from gallery.encoder import embed_paths, load_encoder

    net, spec = make_onnx_encoder(tmp_path / "enc.onnx", color=color)
    enc = load_encoder(tmp_path / "enc.onnx")
    assert enc.spec == spec and enc.dim == 16
    assert enc.identity["sha256"] == file_sha256(tmp_path / "enc.onnx")
    assert enc.identity["model_id"] == "tiny-0" and enc.identity["format"] == "onnx"
    paths = write_digit_folder(tmp_path / "imgs", n_per_class=3)
    rgb = np.stack([np.asarray(load_image(p, PreprocessSpec(32, 32))) for p in paths])
    expected = _reference(net, rgb, spec)
    for batch_size in (1, 7, 64):  # dynamic batch, including a ragged last batch
        got = embed_paths(enc, paths, batch_size=batch_size)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_fixed_batch_model_is_chunked(tmp_path):
    from gallery.encoder import embed_images, load_encoder

    net, spec = make_onnx_encoder(tmp_path / "fixed.onnx", fixed_batch=4)
    images, _ = digit_images(1)
    rgb = np.repeat(images[..., None], 3, axis=3)
    got = embed_images(load_encoder(tmp_path / "fixed.onnx"), rgb)  # 10 images, batch fixed at 4
    np.testing.assert_allclose(got, _reference(net, rgb, spec), atol=1e-4, rtol=1e-4)


def test_gray_spec_and_progress(tmp_path):
    from gallery.encoder import embed_paths, load_encoder

    make_onnx_encoder(tmp_path / "g.onnx", color="GRAY")
    enc = load_encoder(tmp_path / "g.onnx")
    assert enc.spec.channels == 1
    paths = write_digit_folder(tmp_path / "imgs", n_per_class=1)
    seen = []
    out = embed_paths(enc, paths, batch_size=4, progress=seen.append)
    assert out.shape == (10, 16) and sum(seen) == 10 and seen == [4, 4, 2]


def test_missing_metadata_is_not_an_image_encoder(tmp_path):
    from gallery.encoder import load_encoder

    make_onnx_encoder(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(BadInput, match="not a gallery image encoder"):
        load_encoder(tmp_path / "bare.onnx")


def test_non_image_onnx_rejected(tmp_path):
    from gallery.encoder import load_encoder

    mlp = torch.nn.Linear(10, 4)
    torch.onnx.export(mlp, (torch.zeros(1, 10),), str(tmp_path / "mlp.onnx"), dynamo=False)
    with pytest.raises(BadInput, match="not an image encoder"):
        load_encoder(tmp_path / "mlp.onnx")


def test_garbage_and_unknown_files(tmp_path):
    from gallery.encoder import load_encoder

    (tmp_path / "junk.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(BadInput, match="cannot load ONNX model"):
        load_encoder(tmp_path / "junk.onnx")
    (tmp_path / "m.xyz").write_text("x")
    with pytest.raises(BadInput, match=r"unknown encoder format '\.xyz'; valid: .*\.onnx"):
        load_encoder(tmp_path / "m.xyz")
    with pytest.raises(BadInput, match="model file not found"):
        load_encoder(tmp_path / "absent.onnx")


def test_require_gpu_fails_loudly_without_cuda(tmp_path):
    import onnxruntime

    from gallery.encoder import load_encoder

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    make_onnx_encoder(tmp_path / "e.onnx")
    with pytest.raises(BadInput, match="CUDA is not the active"):
        load_encoder(tmp_path / "e.onnx", require_gpu=True)


def test_unreadable_image_names_the_file(tmp_path):
    from gallery.encoder import embed_paths, load_encoder

    make_onnx_encoder(tmp_path / "e.onnx")
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    with pytest.raises(BadInput, match="broken.png"):
        embed_paths(load_encoder(tmp_path / "e.onnx"), [bad])


def test_contradictory_channels_metadata(tmp_path):
    from gallery.encoder import load_encoder

    make_onnx_encoder(tmp_path / "e.onnx")
    model = onnx.load(str(tmp_path / "e.onnx"))
    for entry in model.metadata_props:
        if entry.key == "gallery.channels":
            entry.value = "1"
    onnx.save(model, str(tmp_path / "e.onnx"))
    with pytest.raises(BadInput, match="gallery.channels=1 contradicts colour order RGB"):
        load_encoder(tmp_path / "e.onnx")
