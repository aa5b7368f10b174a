"""Small real datasets on disk, for tests, benchmarks and demos (no download).

Fashion-MNIST comes from Debian's dataset-fashion-mnist (IDX files under
/usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from gallery.errors import BadInput

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz): big-endian header, dtype code 0x08 = uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise BadInput(f"{path} is not a uint8 IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "train", per_class: int | None = None,
                  root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(N x 28 x 28 uint8, N labels); the first `per_class` images of each class."""
    prefix = {"train": "train", "test": "t10k"}[split]
    image_file, label_file = (root / f"{prefix}-images-idx3-ubyte.gz",
                              root / f"{prefix}-labels-idx1-ubyte.gz")
    if not image_file.exists():
        raise BadInput(f"Fashion-MNIST not found at {root} (apt install dataset-fashion-mnist)")
    images, labels = read_idx(image_file), read_idx(label_file).astype(np.int64)
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        keep.sort()
        images, labels = images[keep], labels[keep]
    return images, labels


def write_image_folder(root: str | Path, images: np.ndarray, labels: np.ndarray,
                       class_names: tuple[str, ...] | list[str]) -> Path:
    """Write ROOT/<class name>/<index>.png for each image."""
    from PIL import Image

    root = Path(root)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    return root
