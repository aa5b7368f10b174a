"""Tiny ONNX image encoders (exported from a small torch net, with gallery.* metadata) and
folders of real digit images: the models and data of the encoder, store, rollout, threshold
and serving tests. Needs torch and onnx (test modules importorskip them first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from gallery.preprocess import PreprocessSpec


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


def write_digit_split(root: Path, old_rows: int, new_rows: int, limit: int | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits (0..16 scaled to 0..240) as two training sets: classes 0-4 for an
    old model (ROOT/old.npz, its first `old_rows`), 5-9 for a new one (ROOT/new.npz, `new_rows`),
    drawn from the first `limit` images only (the rest stay unseen). Returns every image and label."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * 15).astype(np.uint8)
    drawn = np.arange(len(images)) < (len(images) if limit is None else limit)
    for name, chosen, rows in (("old", d.target < 5, old_rows), ("new", d.target >= 5, new_rows)):
        np.savez(root / f"{name}.npz", images=images[drawn & chosen][:rows], labels=d.target[drawn & chosen][:rows])
    return images, d.target


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


def torch_reference(net, images_rgb: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Independent preprocessing in plain numpy, then the torch net."""
    x = images_rgb.astype(np.float64)
    if spec.color_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.array(spec.mean)) / np.array(spec.std)
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()


def make_onnx_adapter(path: Path, old_model: Path, new_model: Path, seed: int = 0) -> Path:
    """A random linear adapter (old model's space -> new model's) exported as `train-adapter`
    exports one, with gallery.adapter.* metadata naming both model files."""
    from gallery.adapter import ADAPTER_FORMAT, adapter_metadata
    from gallery.encoder import load_encoder
    from gallery.model_identity import model_sha256
    from trainer.adapter import ResidualAdapter

    old, new = load_encoder(old_model), load_encoder(new_model)
    torch.manual_seed(seed)
    net = ResidualAdapter(old.dim, new.dim, arch="linear").eval()
    torch.onnx.export(net, (torch.randn(2, old.dim),), str(path), input_names=["embedding"],
                      output_names=["adapted"], dynamic_axes={"embedding": {0: "n"}, "adapted": {0: "n"}},
                      dynamo=False)
    values = {"format": ADAPTER_FORMAT, "from_sha256": model_sha256(old_model), "from_model_id": old.identity["model_id"],
              "to_sha256": model_sha256(new_model), "to_model_id": new.identity["model_id"],
              "from_dim": old.dim, "to_dim": new.dim, "data_fingerprint": "random", "num_images": 0,
              "arch": {"name": "linear"}, "model_id": f"tiny-adapter-{seed}", "training": {"seed": seed}}
    model = onnx.load(str(path))
    for key, value in adapter_metadata(values).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path
