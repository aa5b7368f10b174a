"""The dataset contract shared by every reader (ImageFolder, RecordIO, HDF5/npz).

A dataset knows its images as HxWxC uint8 in the model's preprocessing spec and
its labels as a deterministic identity -> label map (label = index into the
sorted `classes`). The loader asks for whole batches (`images_uint8(indices)`)
so in-memory datasets are sliced in one numpy call instead of per-sample Python.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from gallery.errors import BadInput
from gallery.fingerprint import strings_sha256
from gallery.preprocess import PreprocessSpec, to_tensor


class TrainDataset:
    """Base class. Subclasses set spec, labels, classes and implement images_uint8."""

    spec: PreprocessSpec
    labels: np.ndarray          # int64, dataset order
    classes: list[str]          # identity names; label i <-> classes[i]
    source: str

    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_map(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def label_map_sha256(self) -> str:
        """Fingerprint of the identity -> label map, stored with every model."""
        return strings_sha256(self.classes)

    def listing_fingerprint(self) -> str:
        raise NotImplementedError

    def images_uint8(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """N x H x W x C uint8 images in the spec's size and colour order."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        if not 0 <= int(i) < len(self):
            raise IndexError(i)
        image = to_tensor(self.images_uint8([int(i)]), self.spec)[0]
        return torch.from_numpy(image), int(self.labels[i]), int(i)


class ArrayDataset(TrainDataset):
    """Images held in memory as one uint8 array: the fast path for training."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 spec: PreprocessSpec, source: str, fingerprint: str) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.spec = spec
        self.source = source
        self._fingerprint = fingerprint
        check_labels(self.labels, self.classes, source)

    def listing_fingerprint(self) -> str:
        return self._fingerprint

    def images_uint8(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]


def check_labels(labels: np.ndarray, classes: list[str], source: str) -> None:
    """Training needs at least one image and two identities (a softmax over one is 0)."""
    if len(labels) == 0:
        raise BadInput(f"dataset {source} is empty")
    present = np.unique(labels)
    if len(present) < 2:
        raise BadInput(f"dataset {source} has a single identity; training needs at least 2")
    if present.min() < 0 or present.max() >= len(classes):
        raise BadInput(f"dataset {source} has labels outside 0..{len(classes) - 1}")


def dense_labels(raw: np.ndarray, names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary integer labels to 0..C-1 in sorted order; names follow the same order."""
    raw = np.asarray(raw).astype(np.int64).reshape(-1)
    unique, dense = np.unique(raw, return_inverse=True)
    if names is not None:
        if unique.size and (unique.min() < 0 or unique.max() >= len(names)):
            raise BadInput(f"labels index past the {len(names)} class names given")
        classes = [str(names[int(u)]) for u in unique]
    else:
        classes = [str(int(u)) for u in unique]
    return dense.astype(np.int64), classes
