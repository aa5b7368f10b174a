"""ROOT/<identity>/<image> read once into memory.

Decoding every file once (instead of PIL per sample per epoch) keeps the loader
far ahead of a small CPU net; resizing and colour order come from the same
gallery.preprocess.load_image that extraction and serving use.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from gallery.errors import BadInput
from gallery.fingerprint import ContentDigest
from gallery.imagefolder import list_image_folder
from gallery.preprocess import PreprocessSpec, load_image

from trainer.data.base import ArrayDataset

log = logging.getLogger(__name__)
MAX_NAMED = 5  # unreadable files named in the error line


def read_image_folder(root: str | Path, spec: PreprocessSpec,
                      progress: Callable[[int], None] | None = None) -> ArrayDataset:
    """Decode every image under ROOT/<identity>/ into one uint8 array.

    The dataset's fingerprint hashes the same bytes that are decoded (one read per file),
    and equals listing.fingerprint().
    """
    listing = list_image_folder(root, min_identities=2)
    images = np.empty((len(listing.paths), spec.height, spec.width, spec.channels), np.uint8)
    bad: list[str] = []
    digest = ContentDigest()
    for i, path in enumerate(listing.paths):
        try:
            data = path.read_bytes()
            digest.add(listing.name(i), data)
            images[i] = load_image(io.BytesIO(data), spec)
        except (BadInput, OSError):
            bad.append(listing.name(i))
        if progress is not None:
            progress(1)
    if bad:
        named = ", ".join(bad[:MAX_NAMED]) + (" ..." if len(bad) > MAX_NAMED else "")
        raise BadInput(f"{len(bad)} unreadable image(s) under {listing.root}: {named}")
    log.info("decoded %d images of %d identities from %s", len(images),
             len(listing.classes), listing.root)
    return ArrayDataset(images, np.asarray(listing.labels, np.int64), listing.classes, spec,
                        source=str(listing.root), fingerprint=digest.hexdigest())
