"""HDF5 / npz image arrays: `images` (N,H,W[,C] uint8), `labels` (N ints), optional `classes`.

Arrays in another size or channel count are converted once, on load, with the
same PIL resize and colour conversion as gallery.preprocess.load_image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gallery.errors import BadInput
from gallery.fingerprint import file_sha256
from gallery.preprocess import PreprocessSpec, to_color_order

from trainer.data.base import ArrayDataset, dense_labels

ARRAY_SUFFIXES = (".h5", ".hdf5", ".npz")


def read_arrays(path: str | Path, spec: PreprocessSpec) -> ArrayDataset:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"dataset file not found: {path}")
    images, labels, names = _load(path)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise BadInput(f"{path}: 'images' must be N x H x W [x C] uint8, got "
                       f"{images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise BadInput(f"{path}: {len(images)} images but {len(labels)} labels")
    dense, classes = dense_labels(labels, names)
    return ArrayDataset(conform(images, spec), dense, classes, spec, source=str(path),
                        fingerprint=file_sha256(path))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:  # never unpickle
                return _pick(path, {k: data[k] for k in data.files})
        if path.suffix in (".h5", ".hdf5"):
            from gallery.h5safe import open_input

            with open_input(path) as data:
                return _pick(path, {k: data[k][()] for k in data.keys() if k in
                                    ("images", "labels", "classes")})
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from None
    raise BadInput(f"unknown array format {path.suffix!r}; valid: {', '.join(ARRAY_SUFFIXES)}")


def _pick(path: Path, data: dict) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    missing = [k for k in ("images", "labels") if k not in data]
    if missing:
        raise BadInput(f"{path} lacks array(s) {', '.join(missing)}")
    names = None
    if "classes" in data:
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in data["classes"]]
    return np.asarray(data["images"]), np.asarray(data["labels"]).reshape(-1), names


def conform(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resize / convert channels to the spec, like load_image does for files."""
    from PIL import Image

    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.shape[1:3] == (spec.height, spec.width):
        return np.stack([to_color_order(im, spec) for im in images]) if (
            images.shape[3] != spec.channels or spec.color_order == "BGR") else images
    out = np.empty((len(images), spec.height, spec.width, spec.channels), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        pil = pil.resize((spec.width, spec.height), Image.BILINEAR)
        out[i] = to_color_order(np.asarray(pil, dtype=np.uint8), spec)
    return out
