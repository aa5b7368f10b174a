"""An identity folder ROOT/<identity>/<image> as an evaluation set.

Photos of faces: a model that declares aligned face input gets YuNet-detected, aligned
crops, as enroll and search give it (gallery.ingest; `detect=False` for folders of aligned
crops). A photo in which no face is found is an item error: it is left out for every model
(the protocols are built over the items all models embedded) and reported, or with
on_error="fail" it fails the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from gallery.compat.evalsets.base import Embedded, EvalSet, Progress
from gallery.encoder import Encoder, embed_paths
from gallery.errors import BadInput
from gallery.imagefolder import list_image_folder
from gallery.ingest import embed_items, image_loader, uses_faces
from gallery.preprocess import load_image


class FolderSet(EvalSet):
    kind = "folder"

    def __init__(self, root: str | Path) -> None:
        self.listing = list_image_folder(root, min_identities=2)
        super().__init__(str(Path(root)), self.listing.fingerprint(), len(self.listing.paths))
        self._labels = np.asarray(self.listing.labels, dtype=np.int64)
        self.left_out = 0  # items of the folder not in this set (no face found)

    def image_batches(self, encoder: Encoder, batch_size: int) -> Iterator[np.ndarray]:
        paths = self.listing.paths
        for start in range(0, len(paths), batch_size):
            yield np.stack([load_image(p, encoder.spec) for p in paths[start : start + batch_size]])

    def embed(self, encoder: Encoder, batch_size: int = 64, progress: Progress = None) -> np.ndarray:
        return embed_paths(encoder, self.listing.paths, batch_size=batch_size, progress=progress)

    def embed_roles(self, encoders: Mapping[str, Encoder], batch_size: int = 64, progress: Progress = None,
                    detect: bool | None = None, detector: str | Path | None = None,
                    on_error: str = "skip") -> Embedded:
        items, kept, errors = {}, {}, {}
        names = [self.listing.name(i) for i in range(self.num_items)]
        for role, encoder in encoders.items():
            if not uses_faces(encoder, detect):
                items[role] = self.embed(encoder, batch_size, progress)
                continue
            done = embed_items(encoder, self.listing.paths, image_loader(encoder, detect, detector), on_error,
                               batch_size, progress, names=names)
            items[role], kept[role] = done.embeddings, np.asarray(done.kept, dtype=np.int64)
            for error in done.errors:
                errors.setdefault(error["item"], error)
        if not errors:
            return Embedded(items)
        common = np.arange(self.num_items)
        for positions in kept.values():
            common = np.intersect1d(common, positions)
        for role, array in items.items():  # rows of the items every model embedded
            items[role] = array[np.searchsorted(kept[role], common)] if role in kept else array[common]
        return Embedded(items, common, list(errors.values()))

    def subset(self, kept: np.ndarray) -> "FolderSet":
        keep = [int(i) for i in kept]
        identities = [self.listing.identities[i] for i in keep]
        if len(set(identities)) < 2:
            raise BadInput(f"{self.path}: fewer than 2 identities left with usable images "
                           f"({self.num_items - len(keep)} of {self.num_items} left out)")
        out = object.__new__(FolderSet)
        out.listing = dataclasses.replace(self.listing, paths=[self.listing.paths[i] for i in keep],
                                          identities=identities, classes=sorted(set(identities)))
        EvalSet.__init__(out, self.path, self.fingerprint, len(keep))  # the folder's own fingerprint
        out._labels = np.asarray(out.listing.labels, dtype=np.int64)
        out.left_out = self.left_out + self.num_items - len(keep)
        return out

    def unit_labels(self) -> np.ndarray:
        return self._labels

    def describe(self) -> dict:
        return {**super().describe(), "left_out": self.left_out}
