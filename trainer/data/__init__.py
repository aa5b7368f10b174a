"""Training data readers: ImageFolder, insightface RecordIO, HDF5 / npz arrays.

`open_dataset(path, spec)` picks the reader from the path; every dataset follows
trainer.data.base.TrainDataset (labels, classes, label_map_sha256, batches of
uint8 images in the model's preprocessing spec).
"""

from __future__ import annotations

from pathlib import Path

from gallery.errors import BadInput
from gallery.preprocess import PreprocessSpec

from trainer.data.arrays import ARRAY_SUFFIXES, read_arrays
from trainer.data.base import ArrayDataset, TrainDataset
from trainer.data.imagefolder import read_image_folder
from trainer.data.loaders import EpochLoader, make_loader
from trainer.data.recordio import RecordIODataset


def open_dataset(path: str | Path, spec: PreprocessSpec, progress=None) -> TrainDataset:
    """DIR (ImageFolder, or holding train.rec), FILE.rec, FILE.h5/.hdf5/.npz."""
    path = Path(path)
    if path.is_dir() and (path / "train.rec").exists():
        return RecordIODataset(path / "train.rec", spec)
    if path.is_dir():
        return read_image_folder(path, spec, progress=progress)
    if path.suffix == ".rec":
        return RecordIODataset(path, spec)
    if path.suffix in ARRAY_SUFFIXES:
        return read_arrays(path, spec)
    if not path.exists():
        raise BadInput(f"dataset not found: {path}")
    raise BadInput(f"unknown dataset format {path.name!r}; valid: an image folder, "
                   f".rec (+ .idx), {', '.join(ARRAY_SUFFIXES)}")


__all__ = ["ArrayDataset", "EpochLoader", "RecordIODataset", "TrainDataset", "make_loader",
           "open_dataset"]
