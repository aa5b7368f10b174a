"""Uploaded images -> query or enrolment embeddings, with the model's declared
preprocessing (face models: YuNet detection + 5-point alignment first).

Uploads are decoded from memory, never written to disk. The pixel count is read from
the image header before anything is decoded, so a small file that would expand into a
huge bitmap (a decompression bomb) is refused without allocating it.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from gallery.encoder import embed_images
from gallery.errors import BadInput
from gallery.faces.crop import FaceCropper, load_photo
from gallery.faces.detect import YuNetDetector
from gallery.preprocess import load_image

ALIGNED_FACES = "arcface-5pt"  # gallery.faces.presets.ALIGN_ARCFACE, without importing cv2 here


class ImageTooLarge(BadInput):
    """An upload whose decoded size exceeds the service's pixel limit (HTTP 413)."""


@dataclass
class Upload:
    name: str
    data: bytes


def check_pixels(upload: Upload, max_pixels: int) -> None:
    """Header-only: refuse unreadable files and images above `max_pixels`."""
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"not a readable image: {upload.name} ({exc.__class__.__name__})") from None
    if width * height > max_pixels:
        raise ImageTooLarge(f"image {upload.name} is {width}x{height} pixels, over the limit of "
                            f"{max_pixels:,}")


class ImageEncoder:
    """Encodes uploads with a snapshot's encoder; one face detector per service."""

    def __init__(self, max_pixels: int, detector_path: str | Path | None = None) -> None:
        self.max_pixels = max_pixels
        self.detector_path = detector_path
        self._detector: Any = None
        self._lock = threading.Lock()  # OpenCV's detector keeps per-call input state

    def embed(self, encoder: Any, uploads: Sequence[Upload]) -> np.ndarray:
        for upload in uploads:
            check_pixels(upload, self.max_pixels)
        if _aligned_faces(encoder):
            return embed_images(encoder, [self._face(encoder, u) for u in uploads])
        return embed_images(encoder, [self._pixels(encoder, u) for u in uploads])

    @staticmethod
    def _pixels(encoder: Any, upload: Upload) -> np.ndarray:
        try:
            return load_image(io.BytesIO(upload.data), encoder.spec)
        except BadInput:
            raise BadInput(f"not a readable image: {upload.name}") from None

    def _face(self, encoder: Any, upload: Upload) -> np.ndarray:
        try:
            photo = load_photo(io.BytesIO(upload.data))
        except BadInput:
            raise BadInput(f"not a readable image: {upload.name}") from None
        with self._lock:
            if self._detector is None:
                self._detector = YuNetDetector(self.detector_path)
            return FaceCropper(encoder.spec, self._detector).crop_image(photo, upload.name)


def _aligned_faces(encoder: Any) -> bool:
    return encoder.identity.get("metadata", {}).get("gallery.alignment") == ALIGNED_FACES
