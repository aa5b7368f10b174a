"""Dataset writers: ImageFolder PNGs (ROOT/<identity>/<file>.png) and one HDF5 file.

Both are byte-for-byte deterministic: PNGs carry no timestamps and HDF5 objects
are written with track_times=False, so the same build arguments give the same
bytes (and the same sha256) on the same machine.

HDF5 layout (read by trainer data readers):
  images  uint8 (N, H, W, C)  pixels in `attrs["color_order"]` (GRAY or RGB)
  labels  int64 (N,)          index into `classes`
  classes utf-8 strings (C,)  sorted identity names (= ImageFolder folder names)
  names   utf-8 strings (N,)  relative path of the same image in the ImageFolder
  plus builder-specific per-image arrays (e.g. glyph `face`, `index`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Sequence

import h5py
import numpy as np
from gallery.h5safe import open_input
from PIL import Image

HDF5_FORMAT = "gallery.images/1"


def write_imagefolder(
    root: Path, names: Sequence[str], images: np.ndarray, progress: Callable[[int], None] | None = None
) -> None:
    """Write images[i] to root/names[i] (names are '<identity>/<file>.png')."""
    made: set[str] = set()
    for i, name in enumerate(names):
        folder = name.rsplit("/", 1)[0]
        if folder not in made:
            (root / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        pixels = images[i]
        mode_pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        Image.fromarray(mode_pixels).save(root / name, format="PNG", compress_level=1)
        if progress is not None and (i + 1) % 256 == 0:
            progress(256)
    if progress is not None and len(names) % 256:
        progress(len(names) % 256)


def write_hdf5(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    names: Sequence[str],
    extra: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> None:
    """One file holding the whole split; chunked per batch of images for fast reading."""
    str_type = h5py.string_dtype("utf-8")
    chunk = (min(len(images), 256),) + images.shape[1:]
    with h5py.File(path, "w", track_order=False) as handle:
        handle.create_dataset("images", data=images, chunks=chunk, track_times=False)
        handle.create_dataset("labels", data=labels.astype(np.int64), track_times=False)
        handle.create_dataset("classes", data=list(classes), dtype=str_type, track_times=False)
        handle.create_dataset("names", data=list(names), dtype=str_type, track_times=False)
        for key, value in (extra or {}).items():
            handle.create_dataset(key, data=value, track_times=False)
        handle.attrs["format"] = HDF5_FORMAT
        handle.attrs["color_order"] = "GRAY" if images.shape[3] == 1 else "RGB"
        for key, value in (attrs or {}).items():
            handle.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True)


def read_hdf5(path: Path) -> dict[str, np.ndarray]:
    """Load a split written by write_hdf5 (used by tests and small tools)."""
    with open_input(path) as handle:
        data = {key: handle[key][()] for key in handle.keys()}
        data["attrs"] = dict(handle.attrs)
    for key in ("classes", "names"):
        data[key] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in data[key]]
    return data
