"""An identity folder ROOT/<identity>/<image> as an evaluation set."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from gallery.compat.evalsets.base import EvalSet, Progress
from gallery.encoder import Encoder, embed_paths
from gallery.imagefolder import list_image_folder
from gallery.preprocess import load_image


class FolderSet(EvalSet):
    kind = "folder"

    def __init__(self, root: str | Path) -> None:
        self.listing = list_image_folder(root, min_identities=2)
        super().__init__(str(Path(root)), self.listing.fingerprint(), len(self.listing.paths))
        self._labels = np.asarray(self.listing.labels, dtype=np.int64)

    def image_batches(self, encoder: Encoder, batch_size: int) -> Iterator[np.ndarray]:
        paths = self.listing.paths
        for start in range(0, len(paths), batch_size):
            yield np.stack([load_image(p, encoder.spec) for p in paths[start : start + batch_size]])

    def embed(self, encoder: Encoder, batch_size: int = 64, progress: Progress = None) -> np.ndarray:
        return embed_paths(encoder, self.listing.paths, batch_size=batch_size, progress=progress)

    def unit_labels(self) -> np.ndarray:
        return self._labels
